"""Faults survived on the default checkpoint path (Orbax's standard format, checksums),
checked against one uninterrupted reference run (1 CPU device): SIGKILL (mid main branch,
mid save, mid decay branch; each leaves its writer lock behind), SIGINT and SIGTERM, a full
disk during a save, a truncated and a deleted file, a flipped byte, all in one run that
must end with the reference's bits; and a NaN that stops a run with nothing non-finite
saved."""

import json
import resource
import signal

import jax
import numpy as np
import pytest

from conftest import run_cli, subprocess_env
from wsdjax import checkpoint as ckpt

pytestmark = pytest.mark.slow

# WSD with budgets 20 and 40, decays of 5 and 10 steps: main forks decay-20 at 15 and
# decays itself from 30 to 40 (branch decay-40); saves every 5 steps.
ARGS = ["--config", "configs/tiny.py", "--config.model.seq_len=32",
        "--config.train.ema_decays=(0.9,)",  # the EMA shadow must resume bitwise too
        "--config.train.global_batch_size=8", "--config.train.log_every=5",
        "--config.schedule.name=wsd", "--config.schedule.budgets=(20,40)",
        "--config.schedule.decay_fraction=0.25", "--config.checkpoint.every=5"]


def train(workdir, faults="", file_size_limit=None, extra=()):
  env = subprocess_env(1) | {"WSDJAX_FAULTS": faults}

  def limit_file_size():  # a stand-in for a full disk: writes past the limit fail (EFBIG)
    if file_size_limit:
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

  return run_cli("wsdjax.train", *ARGS, *extra, "--workdir", str(workdir), env=env, timeout=900,
                 preexec_fn=limit_file_size)


def manifest(workdir) -> list[dict]:
  return json.loads((workdir / "checkpoints" / "manifest.json").read_text())


def final_states(workdir) -> dict:
  """(branch, step) -> host state, for each branch's newest save."""
  last = {}
  for e in manifest(workdir):
    last[e["branch"]] = max(last.get(e["branch"], 0), e["step"])
  return {(b, s): ckpt.restore(str(workdir), branch=b, step=s) for b, s in last.items()}


def assert_bitwise_equal(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for key in a:
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key]), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(key))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  out = train(workdir)
  assert out.returncode == 0, out.stderr[-2000:]
  states = final_states(workdir)
  main = states[("main", 30)]
  assert len(main.ema) == 1 and not np.array_equal(  # a shadow, not a copy of the params
      jax.tree.leaves(main.ema[0])[0], jax.tree.leaves(main.params)[0])
  return states


def main_steps(workdir) -> list[int]:
  return sorted(e["step"] for e in manifest(workdir) if e["branch"] == "main")


def unrecorded(workdir) -> list[str]:
  """Saves without an integrity record, as "<branch>-<step>": what a SIGKILL leaves when
  it lands after Orbax commits a save and before its record is written. Unverified, each
  is set aside (to checkpoints/broken/) by the next run, which resumes before it."""
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    return [f"{b}-{s}" for b in tree.branches() for s in tree.steps(b)
            if not tree.verification(ckpt.StateRef(b, s)).verified]


def assert_set_aside_unverified(out, names: list[str]) -> None:
  for name in names:
    branch, step = name.rsplit("-", 1)
    assert f"checkpoint: {branch}@{step} is unverified (no integrity record)" in out.stdout


def set_aside(workdir) -> list[str]:
  """The saves in checkpoints/broken/, as "<branch>-<step>" (without the copy number)."""
  return sorted(p.name.rsplit("-", 1)[0] for p in (workdir / "checkpoints" / "broken").iterdir())


def test_kills_signals_broken_and_failed_saves_then_resume_is_bitwise_exact(reference,
                                                                           tmp_path):
  """One run taken through every fault in turn, then finished: it must end with the
  reference's bits (main, decay-20 and decay-40)."""
  run = tmp_path
  out = train(run, "kill_after_step@main:12",  # mid main branch (last save: main@10)
              extra=["--config.checkpoint.async_save=false"])  # both saves complete by then
  assert out.returncode == -9, out.stderr[-2000:]
  assert main_steps(run) == [5, 10]  # each save of the segment entered the manifest

  # The newest save loses half a file, and its checksum record (as when a kill lands
  # between Orbax's commit and the record): unverified, it is never restored; it is set
  # aside and the run falls back to main@5, the newest verified save.
  newest = run / "checkpoints" / "main" / "10"
  data = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  (run / "checkpoints" / "integrity" / "main-10.json").unlink(missing_ok=True)
  expected_aside, left = ["main-10"], []
  for fault in ["kill_in_save@main:15",           # while the fork point is being written
                "kill_after_step@decay-20:18"]:   # mid decay branch
    out = train(run, fault)
    assert out.returncode == -9, (fault, out.returncode, out.stderr[-2000:])
    assert_set_aside_unverified(out, left)
    if fault.endswith("main:15"):
      assert ("main@10 is unverified (no integrity record), so it is not trusted; moved it "
              f"to {run}/checkpoints/broken/main-10-0; resuming from main@5") in out.stdout
      assert "resumed at 5" in out.stdout
    left = unrecorded(run)  # e.g. main@10 again, committed just before the kill
    expected_aside += left

  # SIGINT (Ctrl-C): finish the step, save it, wait for the async save, exit 0.
  out = train(run, "int_after_step@main:22")
  assert out.returncode == 0, out.stderr[-2000:]
  assert_set_aside_unverified(out, left)
  assert "stopped at main@22; the same command resumes" in out.stdout + out.stderr
  assert main_steps(run)[-1] == 22

  # A full disk (writes past 100 kB fail; a state is ~0.9 MB): the next save fails.
  before = main_steps(run)
  out = train(run, file_size_limit=100_000,  # a synchronous save: the write error surfaces
              extra=["--config.checkpoint.async_save=false"])  # in save(), not in a poll
  assert out.returncode == 3, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-3000:]  # Orbax's own log of it is not shown
  assert lines[0].startswith("wsdjax: checkpoint: saving main@25 failed (File too large "
                             f"under {run}/checkpoints/main/25)"), lines[0]
  assert "free disk space" in lines[0]
  assert main_steps(run) == before  # nothing reported that is not on disk

  # The latest save gets broken (one file truncated, one deleted); SIGTERM in decay-40.
  step_dir = run / "checkpoints" / "main" / "22"
  files = sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  files[-1].write_bytes(files[-1].read_bytes()[: files[-1].stat().st_size // 2])
  files[0].unlink()
  good = {p: p.read_bytes() for p in (run / "checkpoints" / "main" / "20").rglob("*")
          if p.is_file()}
  out = train(run, "term_after_step@decay-40:33", extra=["--config.checkpoint.keep=100"])
  assert out.returncode == 0, out.stderr[-2000:]
  assert "checkpoint: main@22 is broken" in out.stdout and "resumed at 20" in out.stdout
  assert set_aside(run) == sorted(expected_aside + ["main-22"])
  assert all(p.read_bytes() == b for p, b in good.items())  # main@20 untouched
  assert "stopped at decay-40@33" in out.stdout + out.stderr

  # One byte flipped in the newest save of decay-40 (its sizes unchanged): the checksums
  # recorded at save catch it; the save is set aside and decay-40 resumes before it.
  newest = run / "checkpoints" / "decay-40" / "33"
  data = max((p for p in (newest / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  flipped = bytearray(data.read_bytes())
  flipped[len(flipped) // 3] ^= 0x01
  data.write_bytes(bytes(flipped))
  out = train(run)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "checkpoint: decay-40@33 is broken: state/" in out.stdout
  assert "changed content" in out.stdout
  assert set_aside(run) == sorted(expected_aside + ["main-22", "decay-40-33"])
  assert_bitwise_equal(reference, final_states(run))

  # A decayed checkpoint of the finished run gets a flipped byte: the rerun finds it and
  # rebuilds it from its fork point, bitwise equal again.
  data = max((p for p in (run / "checkpoints" / "decay-20" / "20").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  flipped = bytearray(data.read_bytes())
  flipped[7] ^= 0x80
  data.write_bytes(bytes(flipped))
  out = train(run)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "decay-20@20 is broken" in out.stdout and "rebuilding it" in out.stdout
  assert_bitwise_equal(reference, final_states(run))


def test_nan_stops_the_run_naming_step_and_metric_and_saves_nothing_non_finite(tmp_path):
  out = train(tmp_path, "nan_at_step@main:8")
  assert out.returncode == 3, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("wsdjax: train: non-finite ") and "train_loss=nan" in last, last
  assert "at main step 8;" in last
  assert main_steps(tmp_path) == [5]  # the last good checkpoint is the latest
  for leaf in jax.tree.leaves(ckpt.restore(str(tmp_path), branch="main")):
    assert np.isfinite(np.asarray(leaf)).all()
  # The remedy the message names: a lower peak LR. The rerun resumes from main@5 with it
  # and finishes; the manifest records the change at main@5.
  assert "rerun with a lower --config.schedule.peak_lr" in last
  peak = json.loads((tmp_path / "config.json").read_text())["schedule"]["peak_lr"]
  out = train(tmp_path, extra=[f"--config.schedule.peak_lr={peak / 2}"])
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"config change from main@5: schedule.peak_lr {peak!r} -> {peak / 2!r}" in out.stdout
  assert "resumed at 5" in out.stdout
  assert json.loads((tmp_path / "checkpoints" / "config_changes.json").read_text()) == [
      {"branch": "main", "step": 5, "changes": {"schedule.peak_lr": [peak, peak / 2]}}]
  entries = {(e["branch"], e["step"]): e for e in manifest(tmp_path)}
  assert entries[("decay-40", 40)]["decayed"]
  assert entries[("main", 30)]["lr"] == pytest.approx(peak / 2)
  listed = run_cli("wsdjax.branches", "--workdir", str(tmp_path))
  assert "config change from main@5: schedule.peak_lr" in listed.stdout, listed.stdout

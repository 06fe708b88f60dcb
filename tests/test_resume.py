"""Faults survived, each checked against one uninterrupted reference run (1 CPU device):
SIGKILL (mid main branch, mid save, mid decay branch), SIGTERM and SIGINT, a broken latest
checkpoint, a full disk during a save; and a NaN that stops the run with nothing
non-finite saved. Resumed runs must end with the reference's bits."""

import json
import resource
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, subprocess_env
from wsdjax import checkpoint as ckpt

pytestmark = pytest.mark.slow

# WSD with budgets 20 and 40, decays of 5 and 10 steps: main forks decay-20 at 15 and
# decays itself from 30 to 40 (branch decay-40); saves every 5 steps.
ARGS = ["--config", "configs/tiny.py", "--config.model.seq_len=32",
        "--config.train.global_batch_size=8", "--config.train.log_every=5",
        "--config.schedule.name=wsd", "--config.schedule.budgets=(20,40)",
        "--config.schedule.decay_fraction=0.25", "--config.checkpoint.every=5"]


def train(workdir, faults="", file_size_limit=None, extra=()):
  env = subprocess_env(1) | {"WSDJAX_FAULTS": faults}

  def limit_file_size():  # a stand-in for a full disk: writes past the limit fail (EFBIG)
    if file_size_limit:
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

  return subprocess.run([sys.executable, "-m", "wsdjax.train", *ARGS, *extra, "--workdir", str(workdir)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
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
  return final_states(workdir)


def main_steps(workdir) -> list[int]:
  return sorted(e["step"] for e in manifest(workdir) if e["branch"] == "main")


def test_sigkill_at_several_points_then_resume_is_bitwise_exact(reference, tmp_path):
  for fault in ["kill_after_step@main:12",        # mid main branch (last save: main@10)
                "kill_in_save@main:15",           # while the fork point is being written
                "kill_after_step@decay-20:18",    # mid decay branch
                "kill_after_step@decay-40:33"]:   # in the last decay, forked from main@30
    out = train(tmp_path, fault)
    assert out.returncode == -9, (fault, out.returncode, out.stderr[-2000:])
  out = train(tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  assert_bitwise_equal(reference, final_states(tmp_path))


@pytest.mark.parametrize("sig", ["term", "int"])
def test_sigterm_or_sigint_saves_exits_zero_and_resumes_exactly(reference, tmp_path, sig):
  out = train(tmp_path, f"{sig}_after_step@main:7")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "stopped at main@7; the same command resumes" in out.stdout + out.stderr
  assert main_steps(tmp_path)[-1] == 7  # saved where it stopped, async save waited for
  out = train(tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  assert_bitwise_equal(reference, final_states(tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_broken_latest_checkpoint_is_set_aside_and_the_previous_one_used(reference, tmp_path,
                                                                         damage):
  out = train(tmp_path, "term_after_step@main:12")
  assert out.returncode == 0 and main_steps(tmp_path)[-2:] == [10, 12], out.stderr[-2000:]
  step_dir = tmp_path / "checkpoints" / "main" / "12"
  biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  if damage == "truncate":
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  else:
    biggest.unlink()
  good = (tmp_path / "checkpoints" / "main" / "10")
  good_files = {p: p.read_bytes() for p in good.rglob("*") if p.is_file()}
  out = train(tmp_path, extra=["--config.checkpoint.keep=100"])  # retention keeps main@10
  assert out.returncode == 0, out.stderr[-2000:]
  assert "checkpoint: main@12 is broken" in out.stdout
  assert "resumed at 10" in out.stdout
  kept = list((tmp_path / "checkpoints" / "broken").iterdir())
  assert [p.name for p in kept] == ["main-12-0"]  # set aside, not deleted
  assert all(p.read_bytes() == b for p, b in good_files.items())  # main@10 untouched
  assert_bitwise_equal(reference, final_states(tmp_path))


def test_full_disk_during_a_save_is_a_clear_error_and_older_saves_survive(reference,
                                                                          tmp_path):
  out = train(tmp_path, "term_after_step@main:12")
  assert out.returncode == 0, out.stderr[-2000:]
  before = main_steps(tmp_path)
  out = train(tmp_path, file_size_limit=100_000)  # the state's files are ~0.9 MB
  assert out.returncode == 3, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("wsdjax: checkpoint: saving main@15 failed") and "free disk" in last
  assert main_steps(tmp_path) == before  # nothing reported that is not on disk
  out = train(tmp_path)  # space is back: the same command finishes the run exactly
  assert out.returncode == 0, out.stderr[-2000:]
  assert_bitwise_equal(reference, final_states(tmp_path))


def test_nan_stops_the_run_naming_step_and_metric_and_saves_nothing_non_finite(tmp_path):
  out = train(tmp_path, "nan_at_step@main:8")
  assert out.returncode == 3, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("wsdjax: train: non-finite ") and "train_loss=nan" in last, last
  assert "at main step 8;" in last
  assert main_steps(tmp_path) == [5]  # the last good checkpoint is the latest
  for leaf in jax.tree.leaves(ckpt.restore(str(tmp_path), branch="main")):
    assert np.isfinite(np.asarray(leaf)).all()

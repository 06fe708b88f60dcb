"""Integrity fails closed, and no command can destroy a run (issue #33, parts 2 and 4).

A save whose integrity record is missing, empty or not JSON is unverified: with bytes
flipped in a decayed checkpoint, a rerun of the train command never restores it silently
(it sets the save aside, says so, and rebuilds it bitwise equal to an undisturbed run);
`checkpoint.restore` restores it with a warning; `branches` lists it unverified;
`branches --verify` tells intact, damaged and unverified saves apart and `--record` vouches
for unverified ones (never for damaged ones), after which a rerun trusts them. A run with
no verified save at all stops in one line, exit 2, its checkpoints byte-for-byte
unchanged. A workdir that cannot be written is refused in one line, exit 2, nothing
written.

Every case starts from a copy of one trained run (WSD, budget 20: main@5, main@10, the
fork point main@15 and the decayed checkpoint decay-20@20), run as the user runs it.
"""

import errno
import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from conftest import run_cli as cli
from wsdjax.analysis import tree_listing
from wsdjax import checkpoint as ckpt
from wsdjax.checkpoint import integrity, lock
from wsdjax.checkpoint import verify as verify_lib
from wsdjax.schedule.plan import StateRef

ARGS = ["--config", "configs/tiny.py", "--config.model.seq_len=32",
        "--config.train.global_batch_size=8", "--config.train.log_every=5",
        "--config.schedule.name=wsd", "--config.schedule.budgets=(20,)",
        "--config.schedule.decay_fraction=0.25", "--config.checkpoint.every=5"]
DECAYED = StateRef("decay-20", 20)


def train(workdir):
  return cli("wsdjax.train", *ARGS, "--workdir", workdir)


def one_line(out) -> str:
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-3000:]
  return lines[0]


def snapshot(folder) -> dict:
  """Every file (its bytes) and folder (None) under `folder`."""
  return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
          for p in sorted(folder.rglob("*"))}


def assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def flip_decayed(run) -> tuple:
  """Flip one byte of the decayed checkpoint's largest state file; (path, original bytes)."""
  state = run / "checkpoints" / "decay-20" / "20" / "state"
  path = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  original = path.read_bytes()
  flipped = bytearray(original)
  flipped[len(flipped) // 3] ^= 0x01
  path.write_bytes(bytes(flipped))
  return path, original


def record_of(run, ref: StateRef):
  return integrity.record_path(ckpt.checkpoint_dir(run), ref)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(workdir, decayed state) of one undisturbed run; tests work on copies of it."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  out = train(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, ckpt.restore(str(workdir), DECAYED.branch, DECAYED.step)


@pytest.fixture
def run(reference, tmp_path):
  return shutil.copytree(reference[0], tmp_path / "run")


DISTURB = {"record deleted": (lambda p: p.unlink(), "no integrity record"),
           "record emptied": (lambda p: p.write_text(""), "integrity record unreadable: empty"),
           "record not JSON": (lambda p: p.write_text('{"state/manifest.ocdbt": {"si'),
                               "integrity record unreadable: not valid JSON")}


@pytest.mark.parametrize("case", sorted(DISTURB))
def test_an_unverified_decayed_checkpoint_is_set_aside_and_rebuilt(reference, run, case,
                                                                    capsys):
  disturb, why = DISTURB[case]
  flipped, _ = flip_decayed(run)
  disturb(record_of(run, DECAYED))
  # checkpoint.restore gives the user the state as it is, with one warning line.
  state = ckpt.restore(str(run), DECAYED.branch)
  assert capsys.readouterr().err.splitlines() == [
      f"wsdjax: decay-20@20 is unverified ({why}); restored it as it is, unchecked "
      f"(python -m wsdjax.branches --workdir {run} --verify checks it, --verify --record "
      "vouches for it)"]
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(state),
                                                       jax.tree.leaves(reference[1])))
  listed = {(e["branch"], e["step"]): e for e in tree_listing.load_entries(run)}
  assert (listed[("decay-20", 20)]["verified"], listed[("decay-20", 20)]["integrity"]) == (
      False, "missing" if case == "record deleted" else "unreadable")
  assert all(e["verified"] for key, e in listed.items() if key != ("decay-20", 20))
  # A rerun never restores it: set aside (kept), rebuilt from the fork point, same bits.
  rel = flipped.relative_to(run / "checkpoints" / "decay-20" / "20")
  flipped_bytes = flipped.read_bytes()
  out = train(run)
  assert out.returncode == 0, out.stderr[-3000:]
  moved = run / "checkpoints" / "broken" / "decay-20-20-0"
  assert out.stdout.splitlines()[0] == (
      f"checkpoint: decay-20@20 is unverified ({why}), so it is not trusted; moved it to "
      f"{moved}; resuming from main@15")
  assert "segment decay-20 [15, 20)" in out.stdout and "segment main" not in out.stdout
  assert (moved / rel).read_bytes() == flipped_bytes  # kept as it was found
  assert (moved / "REASON.txt").read_text() == f"checkpoint: decay-20@20 is unverified ({why})\n"
  assert_bitwise_equal(ckpt.restore(str(run), DECAYED.branch), reference[1])
  assert capsys.readouterr().err == ""  # verified now: no warning


def test_a_run_with_no_verified_save_stops_in_one_line_until_vouched_for(reference, run):
  """integrity/ deleted (and a flipped byte): nothing is moved, the run stops naming the
  remedy; `branches` lists every state unverified; once the files are good again, `--verify
  --record` vouches for them and a rerun trusts them."""
  flipped, original = flip_decayed(run)
  shutil.rmtree(run / "checkpoints" / "integrity")
  before = snapshot(run / "checkpoints")
  for command in (["wsdjax.train", *ARGS], ["wsdjax.branch", "--from-step", "10"]):
    out = cli(*command, "--workdir", run)
    assert out.returncode == 2, out.stderr[-3000:]
    assert snapshot(run / "checkpoints") == before
    remedy = (f"check them with python -m wsdjax.branches --workdir {run} --verify, and add "
              "--record to vouch for them as they are")
    assert one_line(out) == (
        f"wsdjax: workdir: no save in {run} is verified (4 save(s), none with a readable "
        "integrity record, e.g. a run of an older wsdjax, or checkpoints/integrity/ was "
        "deleted), "
        f"so none is resumed from and nothing was moved; {remedy}"
        if command[0] == "wsdjax.train" else
        f"wsdjax: checkpoint: main@10 is unverified (no integrity record); check it with "
        f"python -m wsdjax.branches --workdir {run} --verify, and add --record to vouch for "
        "it as it is")
  listed = cli("wsdjax.branches", "--workdir", run)
  assert listed.returncode == 0, listed.stderr[-3000:]
  assert listed.stdout.count("unverified: no integrity record]") == 4
  assert "[decayed, unverified: no integrity record]" in listed.stdout
  flipped.write_bytes(original)  # the user restores the files from a backup, say
  out = cli("wsdjax.branches", "--workdir", run, "--verify")
  assert out.returncode == 2 and out.stdout.splitlines()[-2:] == [
      "decay-20@20    unverified (no integrity record)",
      "4 save(s): 0 intact, 0 damaged, 4 unverified"]
  assert one_line(out) == (
      f"wsdjax: --verify: of 4 save(s) in {run}, 4 unverified (main@5, main@10, main@15, "
      "decay-20@20); vouch for unverified saves as they are with --verify --record, if you "
      "trust their files")
  out = cli("wsdjax.branches", "--workdir", run, "--verify", "--record")
  assert out.returncode == 0, out.stderr[-3000:]
  assert ("recording decay-20@20: it is unverified (no integrity record) and Orbax reads it; "
          "writing a fresh integrity record of its files as they are now") in out.stdout
  assert out.stdout.splitlines()[-1] == "4 save(s): 0 intact, 4 recorded, 0 damaged, 0 unverified"
  out = train(run)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "unverified" not in out.stdout and "20 steps in the plan, 0 run now" in out.stdout
  assert not (run / "checkpoints" / "broken").exists()
  assert_bitwise_equal(ckpt.restore(str(run), DECAYED.branch), reference[1])


def test_verify_tells_damaged_from_unverified_and_never_records_a_damaged_save(run):
  damaged = run / "checkpoints" / "main" / "10" / "state"
  data = max((p for p in damaged.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:-1] + bytes([data.read_bytes()[-1] ^ 0x01]))
  record_of(run, StateRef("main", 5)).write_text("[]")
  kept = record_of(run, StateRef("main", 10)).read_bytes()
  out = cli("wsdjax.branches", "--workdir", run, "--verify", "--record")
  assert out.returncode == 2, out.stderr[-3000:]
  rel = data.relative_to(damaged.parent)
  assert out.stdout.splitlines()[1:] == [
      "main@5         recorded (was unverified: integrity record unreadable: not a list of "
      "files and sizes)",
      f"main@10        damaged ({rel} changed content (its SHA-256 differs from the one "
      "recorded at save))",
      "main@15        intact", "decay-20@20    intact",
      "4 save(s): 2 intact, 1 recorded, 1 damaged, 0 unverified"]
  assert one_line(out) == (
      f"wsdjax: --verify: of 4 save(s) in {run}, 1 damaged (main@10); rerun the train "
      "command: it sets aside the damaged saves it needs (to checkpoints/broken/) and "
      "rebuilds them")
  assert record_of(run, StateRef("main", 10)).read_bytes() == kept
  assert record_of(run, StateRef("main", 5)).read_text().startswith("{")


def test_saves_recorded_without_checksums_are_verified_by_size(tmp_path):
  state = {"w": np.arange(4096, dtype=np.float32)}
  with ckpt.CheckpointTree(tmp_path, checksums=False) as tree:
    tree.save(StateRef("main", 1), state, {"branch": "main", "step": 1})
    tree.wait()
    assert tree.verification(StateRef("main", 1)).verified
  assert [f.status for f in verify_lib.verify(tmp_path)] == ["intact"]
  data = max((p for p in (tmp_path / "checkpoints" / "main" / "1").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:-8])
  assert [(f.status, f.detail.split()[1]) for f in verify_lib.verify(tmp_path)] == [
      ("damaged", "changed")]


@pytest.mark.parametrize("code, reason, fix", [
    (errno.EROFS, "Read-only file system", "make the workdir writable, or copy the run "
     "elsewhere"),
    (errno.EACCES, "Permission denied", "make the workdir writable, or copy the run elsewhere"),
    (errno.ENOSPC, "No space left on device", "free disk space")])
def test_taking_the_lock_of_an_unwritable_workdir_is_one_line(tmp_path, monkeypatch, code,
                                                                reason, fix):
  real_open = os.open

  def refuse(path, *args, **kwargs):
    if os.fspath(path).endswith(lock.LOCK_FILE):
      raise OSError(code, os.strerror(code), os.fspath(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(lock.os, "open", refuse)
  with pytest.raises(ckpt.WorkdirNotWritable) as e:
    lock.acquire(tmp_path)
  assert str(e.value) == (f"workdir: cannot take the writer lock {tmp_path / lock.LOCK_FILE} "
                          f"({reason}); {fix}")
  assert list(tmp_path.iterdir()) == []
  monkeypatch.undo()
  lock.acquire(tmp_path)  # nothing of the refusal is held
  lock.release(tmp_path)


@pytest.fixture
def read_only_run(run, tmp_path):
  """`run` bind-mounted read-only at tmp_path/ro (skipped where mounts are not permitted)."""
  view = tmp_path / "ro"
  view.mkdir()
  bind = subprocess.run(["mount", "--bind", run, view], capture_output=True, text=True)
  if bind.returncode != 0:
    pytest.skip(f"a read-only bind mount needs root with mount rights: {bind.stderr.strip()}")
  try:
    ro = subprocess.run(["mount", "-o", "remount,ro,bind", view], capture_output=True,
                        text=True)
    if ro.returncode != 0:
      pytest.skip(f"cannot remount the bind mount read-only: {ro.stderr.strip()}")
    yield view
  finally:
    subprocess.run(["umount", view], check=True)


def test_train_on_a_read_only_workdir_is_one_line_and_writes_nothing(run, read_only_run):
  before = snapshot(run)
  out = train(read_only_run)
  assert out.returncode == 2, out.stderr[-3000:]
  assert one_line(out) == (
      f"wsdjax: workdir: cannot take the writer lock {read_only_run / lock.LOCK_FILE} "
      "(Read-only file system); make the workdir writable, or copy the run elsewhere")
  assert snapshot(run) == before
  json.loads((read_only_run / "checkpoints" / "manifest.json").read_text())  # still a run

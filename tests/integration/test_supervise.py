"""`launch/tpu_vm.sh supervise` (and `create`/`delete` through queued resources) against
the stand-in gcloud of stand_in_gcloud.py, which plays a queued resource's life on this
machine and runs each worker's commands here: a run preempted three times must end with
the checkpoints of an uninterrupted one; a trainer's config error must end supervision at
once; limits, quota refusals and ssh failures must be counted as the log says; Ctrl-C
must stop the trainers and keep the slice."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, run_cli, subprocess_env
from wsdjax import checkpoint as ckpt

TPU_VM = os.path.join(REPO, "launch", "tpu_vm.py")
STAND_IN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stand_in_gcloud.py")
# WSD-S, budgets 4 and 12, decays of 1 and 3 steps: 13 updates, decay-4 and decay-13.
OVERRIDES = ["--config.schedule.budgets=(4,12)", "--config.schedule.decay_fraction=0.25",
             "--config.schedule.warmup_steps=2", "--config.model.seq_len=32",
             "--config.train.global_batch_size=8", "--config.train.log_every=1",
             "--config.checkpoint.every=3"]
DECAYED = ("decay-4", "decay-13")
# By trainer start: SIGKILL (a VM gone), SIGTERM (a spot VM's notice: the trainer saves and
# exits 0), SIGKILL inside the last decay.
PREEMPTIONS = "kill_after_step@main:2;term_after_step@main:7;kill_after_step@decay-13:11"


@pytest.fixture
def slice_(tmp_path):
  """(run `tpu_vm.py ARGS` with extra env -> CompletedProcess, recorded gcloud calls)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(f"#!/bin/sh\nexec {sys.executable} {STAND_IN} \"$@\"\n")
  (bin_dir / "gcloud").chmod(0o755)
  log = tmp_path / "gcloud.log"
  env = subprocess_env()
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_GCLOUD_LOG=str(log),
             FAKE_TPU_ROOT=str(tmp_path / "tpu"), HOME=str(tmp_path / "laptop"),
             FAKE_VENV=os.path.dirname(os.path.dirname(sys.executable)))

  def run(*args, timeout=420, **extra):
    import subprocess
    return subprocess.run([sys.executable, TPU_VM, "--name", "wsd", "--zone", "z",
                           "--project", "p", *args], cwd=REPO, env=env | extra,
                          capture_output=True, text=True, timeout=timeout)

  def calls():
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  return run, calls


def supervise_args(workdir, *extra):
  return ["supervise", "--accelerator-type", "v4-8", "--spot", "--config", "configs/tiny.py",
          "--workdir", str(workdir), "--shared-workdir", "--poll", "0.2", "--report", "2",
          *extra, *OVERRIDES]


def events(tmp_path):
  path = tmp_path / "laptop" / ".wsdjax" / "supervise-wsd.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def decayed(workdir):
  return {b: [np.asarray(x) for x in jax.tree.leaves(ckpt.restore(str(workdir), branch=b))]
          for b in DECAYED}


@pytest.mark.slow
def test_a_run_preempted_three_times_ends_as_an_uninterrupted_one(slice_, tmp_path):
  """Preemptions at the first three trainer starts; on the way two refused creates
  and two failed ssh calls are weathered, and the second preemption is beyond
  --max-preemptions 1: supervision ends (exit 1) with the run saved, and a rerun of the
  same command with a larger limit reads the counts back and goes on to the end."""
  run, calls = slice_
  reference = tmp_path / "reference"
  out = run_cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(reference),
                *OVERRIDES)
  assert out.returncode == 0, out.stderr[-2000:]
  workdir = tmp_path / "run"
  plays = dict(FAKE_PREEMPTIONS=PREEMPTIONS)
  out = run(*supervise_args(workdir, "--max-preemptions", "1"), FAKE_CREATE_REFUSALS="2",
            FAKE_SSH_FAILURES="2", **plays)
  assert out.returncode == 1, out.stdout[-3000:] + out.stderr
  assert out.stderr.splitlines()[-1].startswith(
      "wsdjax: supervise: gave up after 2 preemptions, more than --max-preemptions 1; the "
      f"run is saved in {workdir}: rerun this command")
  assert "Quota exceeded" in out.stderr
  kinds = [e["event"] for e in events(tmp_path)]
  assert kinds.count("failure") == 2 and kinds.count("gcloud_error") == 2, kinds
  assert kinds.count("preempted") == 2 and kinds[-1] == "gave_up", kinds
  again = run(*supervise_args(workdir, "--max-preemptions", "3"), **plays)
  assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
  assert "supervision resumed: 2 preemption(s), 3 recreation(s), 2 failure(s)" in again.stdout
  kinds = [e["event"] for e in events(tmp_path)]
  assert kinds.count("preempted") == 3 and kinds.count("failure") == 2, kinds
  assert kinds.count("recreate") == 5 and kinds[-2:] == ["finished", "delete"], kinds
  assert "preempted: queued resource wsd is SUSPENDED" in again.stdout
  assert "decayed checkpoints:" in again.stdout and "done: 13 steps" in again.stdout
  # Six creates (two refused), four slices set up and deleted, one a preemption.
  verbs = [c[3:5] for c in calls() if c[2] == "queued-resources"]
  assert verbs.count(["create", "wsd"]) == 6 and verbs.count(["delete", "wsd"]) == 4
  assert all("--spot" in c and "--node-id=wsd" in c for c in calls() if c[3:4] == ["create"])
  a, b = decayed(reference), decayed(workdir)
  for branch in DECAYED:
    for x, y in zip(a[branch], b[branch], strict=True):
      np.testing.assert_array_equal(x, y, err_msg=branch)


def test_a_config_error_on_the_workers_ends_supervision_at_once(slice_, tmp_path):
  run, calls = slice_
  out = run(*supervise_args(tmp_path / "run"), "--config.data.source=tokens",
            f"--config.data.path={tmp_path / 'no_store'}")
  assert out.returncode == 2, out.stdout[-3000:] + out.stderr
  assert out.stderr.startswith(f"wsdjax: data.path: {tmp_path / 'no_store'} is not a "
                               "complete token store")
  kinds = [e["event"] for e in events(tmp_path)]
  assert kinds.count("run") == 1 and "failure" not in kinds and kinds[-1] == "trainer_error"
  assert not (tmp_path / "run").exists()


def test_bad_input_is_one_line_and_asks_for_nothing(slice_, tmp_path):
  run, calls = slice_
  w = str(tmp_path / "run")
  base = ["supervise", "--config", "configs/tiny.py", "--workdir"]
  for args, start in [
      (base + [w, "--accelerator-type", "v4-8"], f"wsdjax: --workdir: {w!r} is not on GCS"),
      (base + ["gs://b/r", "--accelerator-type", "v9-8"], "wsdjax: --accelerator-type: "),
      (base + ["gs://b/r", "--accelerator-type", "v4-8", "--config.train.global_batch_size=0"],
       "wsdjax: train.global_batch_size"),
      (base + ["gs://b/r", "--accelerator-type", "v4-8", "--max-preemptions", "0"],
       "wsdjax: --max-preemptions: 0 is not a count >= 1"),
      (base + ["gs://b/r", "--accelerator-type", "v4-8", "--max-failures", "-1"],
       "wsdjax: --max-failures: -1 is not a count >= 1"),
      (base + ["gs://b/r", "--accelerator-type", "v4-8", "--poll", "0"],
       "wsdjax: --poll: 0.0 is not a number of seconds > 0"),
      (["create", "--accelerator-type", "v4-8", "--spot", "--reserved"], "usage:"),
  ]:
    out = run(*args)
    assert out.returncode == 2, (args, out.stderr)
    assert out.stderr.startswith(start) or start in out.stderr, (args, out.stderr)
    if start != "usage:":
      assert len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
  assert calls() == []


def test_create_waits_for_the_queued_resource_and_delete_removes_it(slice_, tmp_path):
  run, calls = slice_
  out = run("create", "--accelerator-type", "v5litepod-16", "--best-effort", "--poll", "0.05",
            FAKE_QR_WAITS="2")
  assert out.returncode == 0, out.stderr
  states = [line.split(": ", 1)[1].split(" (")[0] for line in out.stdout.splitlines()
            if "queued resource wsd:" in line]
  assert states == ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]
  assert calls()[0] == ["alpha", "compute", "tpus", "queued-resources", "create", "wsd",
                        "--node-id=wsd", "--accelerator-type=v5litepod-16",
                        "--runtime-version=v2-alpha-tpuv5-lite", "--best-effort", "--zone=z",
                        "--project=p"]
  assert run("delete").returncode == 0
  assert calls()[-1][2:6] == ["queued-resources", "delete", "wsd", "--force"]
  assert not (tmp_path / "tpu" / "state.json").exists()
  # A refused request (quota; the stand-in refuses its first 2 creates, this is its 2nd):
  # gcloud's message and its status.
  refused = run("create", "--accelerator-type", "v4-8", "--poll", "0.05",
                FAKE_CREATE_REFUSALS="2")
  assert refused.returncode == 1
  assert "Quota exceeded" in refused.stderr


def test_dry_run_prints_every_command_and_runs_none(slice_, tmp_path):
  run, calls = slice_
  out = run("--dry-run", *supervise_args("gs://b/run")[:-len(OVERRIDES)])
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert [line.split()[3:5] for line in lines[1:]] == [
      ["queued-resources", "create"], ["queued-resources", "describe"], ["tpu-vm", "scp"],
      ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"],
      ["queued-resources", "delete"]]
  assert "wsdjax.train --config=configs/tiny.py --workdir=gs://b/run" in lines[6]
  assert calls() == []

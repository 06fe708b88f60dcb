"""launch/tpu_supervisor.py's decisions on a slice played in-process (no gcloud): Ctrl-C
stops the trainers and keeps the slice, a rerun starts them again without counting a
failure, and a log tells a finished run from a stopped one. The whole loop against a
stand-in gcloud: tests/integration/test_supervise.py."""

import argparse
import json
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "launch"))
import tpu_supervisor  # noqa: E402 - launch/ is no package
import tpu_vm  # noqa: E402

FINISHED = ["decayed checkpoints:", "| decay-4 | 4 | 3.79 |", "done: 13 steps in the plan"]
STOPPED = ["main step 5 | loss 3.2", "wsdjax: stopped at main@5; the same command resumes"]


class PlayedSlice(tpu_vm.Gcloud):
  """An ACTIVE one-worker slice whose status answers are `states`, in turn, and whose
  worker-0 log is `log`; commands are recorded, never run."""

  def __init__(self, states, log):
    super().__init__("wsd", "z", None, dry_run=False)
    self.states, self.log, self.ran = list(states), log, []

  def run(self, *commands):
    self.ran += commands
    return 0

  def queued_state(self):
    return "ACTIVE"

  def query(self, cmd):
    if "describe" in cmd:
      return json.dumps({"networkEndpoints": [{"ipAddress": "10.0.0.1"}]})
    command = cmd[cmd.index("ssh") + 3].removeprefix("--command=")
    if command.startswith("tail"):
      return "\n".join(self.log)
    return f"{tpu_vm.WORKER_MARK} host {self.states.pop(0)}\n"


def args(tmp_path):
  return argparse.Namespace(
      events=str(tmp_path / "events.jsonl"), workdir="gs://b/run", config="configs/tiny.py",
      accelerator_type="v4-8", capacity="spot", poll=0.01, report=600.0, stop_timeout=5.0,
      max_preemptions=3, max_failures=2, keep_slice=False, extra="tpu", repo="", ref="")


def test_ctrl_c_stops_the_trainers_keeps_the_slice_and_a_rerun_starts_them_again(tmp_path):
  played = PlayedSlice(["running", "running", "exited 0"], STOPPED)
  sup = tpu_supervisor.Supervisor(played, args(tmp_path), [], "unused.tgz")
  assert sup.interrupted() == 130
  assert any("kill -TERM" in " ".join(c) for c in played.ran)
  assert not any("delete" in c for c in played.ran)  # the slice is kept
  rerun = PlayedSlice(["exited 0"], STOPPED)
  sup = tpu_supervisor.Supervisor(rerun, args(tmp_path), ["--config.seed=1"], "unused.tgz")
  assert sup.step() is None
  started = [c for c in rerun.ran if "wsdjax.train" in " ".join(c)]
  assert len(started) == 1 and "--config.seed=1" in " ".join(started[0])
  assert sup.counts["failures"] == 0


def test_a_trainer_that_ends_unfinished_on_a_live_slice_is_a_failure_then_rerun(tmp_path):
  played = PlayedSlice(["exited 137"] * 6,
                       ["main step 3 | loss 3.4"])
  sup = tpu_supervisor.Supervisor(played, args(tmp_path), [], "unused.tgz")
  assert sup.step() is None and not played.ran  # seen once: maybe a slice being lost
  assert sup.step() is None and sup.counts["failures"] == 1
  assert any("wsdjax.train" in " ".join(c) for c in played.ran)
  assert sup.step() is None and sup.step() is None and sup.counts["failures"] == 2
  assert sup.step() is None and sup.step() == 1  # a third failure: more than 2


@pytest.mark.parametrize("tail, done", [
    (FINISHED, True), (STOPPED, False), (FINISHED + STOPPED, False),
    (STOPPED + FINISHED, True), (["done: 13 steps"], False)])
def test_finished_needs_the_final_table_and_done_with_no_stop_after(tail, done):
  assert tpu_supervisor.finished(tail) is done


def test_a_nan_stop_ends_supervision_with_the_trainers_line_and_the_remedy(tmp_path, capsys):
  line = "wsdjax: train: non-finite train_loss=nan at main step 812; lower the LR"
  played = PlayedSlice(["exited 3"], ["main step 811 | loss 2.1", line])
  sup = tpu_supervisor.Supervisor(played, args(tmp_path), [], "unused.tgz")
  assert sup.step() == 3 and not played.ran  # no rerun, the slice left as it is
  err = capsys.readouterr().err.splitlines()
  assert err[0] == line and "lower --config.schedule.peak_lr" in err[1]


def test_a_rerun_leaves_a_running_trainer_alone(tmp_path):
  played = PlayedSlice(["running", "running"], ["main step 5 | loss 3.1"])
  sup = tpu_supervisor.Supervisor(played, args(tmp_path), [], "unused.tgz")
  assert sup.step() is None and sup.step() is None and played.ran == []

"""`python -m wsdjax.branch`: decay the main branch when you like.

After the fact:  --workdir W --from-step N [--decay-steps D] [--decay-shape S] [--min-lr-ratio R]
  restores main@N (a saved main step) with its data position, decays for D steps, saves and
  evaluates the result as branch decay-<N+D>, and adds it to the manifest.
Live:            --workdir W --now [--decay-steps D] [--decay-shape S] [--min-lr-ratio R]
  asks the job running in W to fork a decay branch at its next main step (a request file in
  W/requests/, see wsdjax/training/live_requests.py); `--wait` blocks until the branch is saved.
D defaults to the run's decay_fraction of the budget the branch ends at.
"""

from __future__ import annotations

from absl import flags

from wsdjax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
_FROM = flags.DEFINE_integer("from_step", None, "Saved main step to decay from.")
_NOW = flags.DEFINE_bool("now", False, "Ask the running job to fork at its next step.")
_WAIT = flags.DEFINE_bool("wait", False, "With --now: wait until the branch is saved.")
_TIMEOUT = flags.DEFINE_float("timeout", 3600.0, "With --now --wait: give up after seconds "
                               "(and withdraw the request if the job has not accepted it).")
_QUEUE = flags.DEFINE_bool("queue", False, "With --now and no job running: leave the request "
                           "for the next run of the workdir.")
_DECAY_STEPS = flags.DEFINE_integer("decay_steps", None, "Decay length in steps.")
_SHAPE = flags.DEFINE_string("decay_shape", None, "linear | cosine | 1-sqrt | exponential.")
_MIN_LR = flags.DEFINE_float("min_lr_ratio", None, "End LR as a fraction of peak.")


def check_args() -> None:
  """Exit 2 with one line on a flag that cannot work."""
  from wsdjax.schedule.builders import DECAY_SHAPES
  if _NOW.value == (_FROM.value is not None):
    cli.fail("--from_step/--now: give exactly one; --from-step N decays a saved main step, "
             "--now asks the running job")
  if _DECAY_STEPS.value is not None and _DECAY_STEPS.value <= 0:
    cli.fail(f"--decay_steps: must be a positive number of steps, got {_DECAY_STEPS.value}; "
             f"e.g. --decay-steps 100")
  if _SHAPE.value is not None and _SHAPE.value not in DECAY_SHAPES:
    cli.fail(f"--decay_shape: unknown shape {_SHAPE.value!r}; use one of "
             f"{', '.join(DECAY_SHAPES)}")
  if _MIN_LR.value is not None and not 0.0 <= _MIN_LR.value <= 1.0:
    cli.fail(f"--min_lr_ratio: must be in [0, 1], got {_MIN_LR.value}; e.g. 0.1")
  if _SHAPE.value == "exponential" and _MIN_LR.value == 0.0:
    cli.fail("--min_lr_ratio: exponential decay needs min_lr_ratio > 0; e.g. 0.01")


def live(workdir: str, wait: bool, timeout: float) -> None:
  """--now: ask the job in `workdir` for a branch; with `wait`, report it when made."""
  from wsdjax.training import branching, live_requests
  request = branching.request_live(workdir, _DECAY_STEPS.value, _SHAPE.value, _MIN_LR.value,
                                   queue=_QUEUE.value)
  print(f"requested a decay branch from the job in {workdir} (request {request.id})")
  if not wait:
    return
  answer = branching.wait_for_branch(workdir, request.id, timeout)
  if answer is None:
    withdrawn = live_requests.withdraw(workdir, request.id)
    cli.fail(f"--timeout: no branch after {timeout:.0f} s; "
             + ("the request is withdrawn" if withdrawn else "the job accepted it, so the "
                "branch will still be made"), 1)
  finished, loss = answer
  print(f"{finished.branch}: forked at main@{finished.fork_step}, eval loss {loss}")


def main(argv):
  """Check the flags, then decay a saved step, or ask the running job (--now)."""
  from wsdjax.training import branching
  cli.run_workdir(argv, _WORKDIR.value)
  check_args()
  if _NOW.value:
    live(_WORKDIR.value, _WAIT.value, _TIMEOUT.value)
    return
  entry = branching.decay_after_the_fact(
      _WORKDIR.value, _FROM.value, _DECAY_STEPS.value, _SHAPE.value,
      _MIN_LR.value)  # SIGTERM/SIGINT: Stop, which cli.run reports
  print(f"{entry['branch']}: decayed from main@{entry['fork_step']} to step {entry['step']}, "
        f"eval loss {entry['eval_loss']:.4f}")


if __name__ == "__main__":
  cli.run(main)

"""The trainer's hooks (wsdjax.training.hooks): a hook added with every=n runs at exactly
those steps, after the step's save, with the step's context; "end" and "done" hooks see a
segment's end state; a hook's error ends the run."""

import pytest

from conftest import one_device_mesh

from wsdjax.schedule.plan import MAIN
from wsdjax.training import hooks
from wsdjax.training import trainer


def _config(tiny_config):
  tiny_config.schedule.update(name="wsd", budgets=(12,), warmup_steps=2)
  tiny_config.checkpoint.every = 4
  tiny_config.train.log_every = 4
  return tiny_config


def test_hooks_run_only_when_due_in_order_and_validate_when_and_every():
  seen, h = [], hooks.Hooks()
  h.add(lambda c: seen.append(("a", c.step)), every=2)
  h.add(lambda c: seen.append(("b", c.step)) or "found", every=3)
  h.add(lambda c: seen.append(("end", c.step)), when="end")
  for step in range(1, 7):
    h.run("step", hooks.Context(step, None, None, None, False, None, None, None, None, None))
  assert seen == [("a", 2), ("b", 3), ("a", 4), ("a", 6), ("b", 6)]
  context = hooks.Context(6, None, None, None, False, None, None, None, None, None)
  assert h.run("step", context) == ["found"]  # what the due hooks returned, None left out
  with pytest.raises(ValueError, match="when"):
    h.add(print, when="later")
  with pytest.raises(ValueError, match="every"):
    h.add(print, every=0)


def test_a_hook_every_n_steps_sees_each_steps_context(tiny_config, tmp_path):
  """every=3 on a plan main [0, 11) + decay-12 [11, 12): steps 3, 6, 9 of main and none
  of the decay (its segment ends at 12: no step hook at a segment's end); each context
  carries its step, segment, run steps, the state at that step and its data position;
  the step's save is already done; "end" and "done" hooks see the segments' ends."""
  cfg = _config(tiny_config)
  seen = []

  def note(ctx):
    saved = ctx.tree.steps(ctx.branch) if ctx.step % 4 == 0 else None
    seen.append(("step", ctx.branch, ctx.step, ctx.run_steps, int(ctx.live.state.step),
                 ctx.live.position["step"], ctx.extra, saved))

  with trainer.Trainer(cfg, str(tmp_path), mesh=one_device_mesh()) as t:
    t.add_hook(note, every=3)
    t.add_hook(lambda ctx: seen.append(("end", ctx.branch, ctx.step,
                                        int(ctx.live.state.step))), when="end")
    t.add_hook(lambda ctx: seen.append(("done", ctx.branch, ctx.step)), when="done")
    rows = t.run()
  assert [r["branch"] for r in rows] == ["decay-12"]
  assert seen == [
      ("step", MAIN, 3, 3, 3, 3, False, None),
      ("step", MAIN, 6, 6, 6, 6, False, None),
      ("step", MAIN, 9, 9, 9, 9, False, None),
      ("end", MAIN, 11, 11),
      ("done", MAIN, 11),
      ("end", "decay-12", 12, 12),
      ("done", "decay-12", 12),
  ]


def test_a_saved_step_is_on_disk_before_its_hook_runs(tiny_config, tmp_path):
  cfg = _config(tiny_config)
  seen = []
  with trainer.Trainer(cfg, str(tmp_path), mesh=one_device_mesh()) as t:
    t.add_hook(lambda ctx: seen.append((ctx.step, ctx.tree.steps(MAIN))), every=4)
    t.run()
  assert seen == [(4, [4]), (8, [4, 8])]


def test_a_hooks_error_ends_the_run(tiny_config, tmp_path):
  cfg = _config(tiny_config)

  def fail_at_five(ctx):
    if ctx.step == 5:
      raise RuntimeError(f"hook failed at {ctx.branch}@{ctx.step}")

  with trainer.Trainer(cfg, str(tmp_path), mesh=one_device_mesh()) as t:
    t.add_hook(fail_at_five)
    with pytest.raises(RuntimeError, match="hook failed at main@5"):
      t.run()
    assert t.steps_done_here == 5  # nothing trained after the failing hook
    assert t.tree.steps(MAIN) == [4]

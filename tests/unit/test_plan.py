"""The branch planner: segments, start states, decayed checkpoints, compute accounting."""

import pytest

from wsdjax.schedule import plan as plan_lib
from wsdjax.config import base_config
from wsdjax.schedule.plan import MAIN, StateRef


def sched(**kw):
  cfg = base_config().schedule
  cfg.update(dict(warmup_steps=5, decay_fraction=0.1, min_lr_ratio=0.1), **kw)
  return cfg


def spans(plan):
  return [(s.branch, s.start, s.end, None if s.init_from is None else
           (s.init_from.branch, s.init_from.step), s.decayed) for s in plan.segments]


def test_wsd_forks_decay_branches_and_main_goes_on_from_the_fork():
  plan = plan_lib.make_plan(sched(name="wsd", budgets=(100, 200)))
  assert spans(plan) == [
      (MAIN, 0, 90, None, False),
      ("decay-100", 90, 100, (MAIN, 90), True),
      (MAIN, 90, 180, (MAIN, 90), False),
      ("decay-200", 180, 200, (MAIN, 180), True),
  ]
  # B_k + sum_{i<k} d_i
  assert plan.total_steps == 200 + 10
  assert plan.input_reused(1) and not plan.input_reused(2) and not plan.input_reused(3)
  decay = plan.segments[1].schedule_dict()
  assert decay["name"] == "wsd" and decay["total_steps"] == 100 and decay["decay_steps"] == 10
  assert plan.segments[0].schedule_dict()["name"] == "constant"


def test_wsd_s_decays_in_place_and_resumes_from_the_decayed_state():
  plan = plan_lib.make_plan(sched(name="wsd_s", budgets=(100, 200)))
  assert spans(plan) == [
      (MAIN, 0, 90, None, False),
      ("decay-100", 90, 100, (MAIN, 90), True),
      (MAIN, 100, 190, ("decay-100", 100), False),
      ("decay-210", 190, 210, (MAIN, 190), True),
  ]
  wsd = plan_lib.make_plan(sched(name="wsd", budgets=(100, 200)))
  assert plan.total_steps == wsd.total_steps  # equal compute
  # The decayed checkpoint at C_2 = 210 serves budget 200; WSD's end at their budgets.
  assert [s.budget_served for s in plan.decayed] == [100, 200]
  assert [s.budget_served for s in wsd.decayed] == [100, 200]
  assert all(s.budget_served is None for s in plan.segments if not s.decayed)
  assert not any(plan.input_reused(i) for i in range(len(plan.segments)))
  # One LR schedule for the whole lineage: one compiled step.
  assert len({s.schedule for s in plan.segments}) == 1


def test_wsd_s_paper_run_checkpoints():
  plan = plan_lib.make_plan(sched(name="wsd_s", budgets=(12500, 25000, 50000),
                                  warmup_steps=2000))
  decayed = [(s.branch, s.start, s.end) for s in plan.decayed]
  assert decayed == [("decay-12500", 11250, 12500), ("decay-26250", 23750, 26250),
                     ("decay-53750", 48750, 53750)]
  assert plan.total_steps == 53750


def test_cyclic_cosine_is_a_chain_of_cycles():
  plan = plan_lib.make_plan(sched(name="cyclic_cosine", budgets=(100, 200, 300)))
  assert spans(plan) == [
      ("decay-100", 0, 100, None, True),
      ("decay-200", 100, 200, ("decay-100", 100), True),
      ("decay-300", 200, 300, ("decay-200", 200), True),
  ]
  assert plan.segments[1].parent == "decay-100" and plan.segments[1].fork_step == 100


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_baselines_run_one_budget(name):
  plan = plan_lib.make_plan(sched(name=name, budgets=(120,)))
  assert spans(plan) == [("decay-120", 0, 120, None, True)]
  with pytest.raises(ValueError, match="schedule.budgets"):
    plan_lib.make_plan(sched(name=name, budgets=(100, 200)))


def test_constant_is_main_only_saved_and_evaluated_at_every_budget():
  plan = plan_lib.make_plan(sched(name="constant", budgets=(50, 70)))
  assert spans(plan) == [(MAIN, 0, 50, None, False), (MAIN, 50, 70, (MAIN, 50), False)]
  assert plan.decayed == () and plan.total_steps == 70


def test_wsd_with_merges_runs_main_to_every_budget():
  plan = plan_lib.make_plan(sched(name="wsd", budgets=(100, 200), merge_window=20))
  assert spans(plan) == [
      (MAIN, 0, 90, None, False),
      ("decay-100", 90, 100, (MAIN, 90), True),
      (MAIN, 90, 100, (MAIN, 90), False),
      (MAIN, 100, 180, (MAIN, 100), False),
      ("decay-200", 180, 200, (MAIN, 180), True),
      (MAIN, 180, 200, (MAIN, 180), False),
  ]
  assert plan.total_steps == 200 + 10 + 20  # main's last d_k steps are the merges' cost
  # merge_every 0: window // 4 = 5 steps back from each budget, inside (B - 20, B]
  assert plan_lib.merge_sources(sched(name="wsd", budgets=(100, 200), merge_window=20)) == {
      100: [85, 90, 95, 100], 200: [185, 190, 195, 200]}
  assert plan_lib.merge_sources(sched(name="constant", budgets=(50,), merge_window=10,
                                      merge_every=3)) == {50: [41, 44, 47, 50]}
  assert plan_lib.merge_sources(sched(name="wsd", budgets=(100,))) == {}


def test_required_states_are_every_segment_start():
  plan = plan_lib.make_plan(sched(name="wsd", budgets=(100, 200)))
  assert plan.required_states() == {StateRef(MAIN, 90), StateRef(MAIN, 180)}


def test_wsd_fixed_decay_steps():
  plan = plan_lib.make_plan(sched(name="wsd", budgets=(100, 200), decay_steps=30))
  assert [(s.branch, s.start) for s in plan.decayed] == [("decay-100", 70), ("decay-200", 170)]


def test_coinciding_forks_share_the_main_state():
  # d = [round(5.0), round(5.5)] = [5, 6]: both decays fork from main@5.
  plan = plan_lib.make_plan(sched(name="wsd", budgets=(10, 11), decay_fraction=0.5,
                                  warmup_steps=2))
  assert spans(plan) == [
      (MAIN, 0, 5, None, False),
      ("decay-10", 5, 10, (MAIN, 5), True),
      ("decay-11", 5, 11, (MAIN, 5), True),
  ]
  assert plan.input_reused(1) and not plan.input_reused(2)


def test_after_the_fact_branch():
  cfg = sched(name="wsd_s", budgets=(100, 200))
  seg = plan_lib.after_the_fact(cfg, from_step=60, decay_steps=15, decay_shape="cosine",
                                min_lr_ratio=0.0)
  assert (seg.branch, seg.start, seg.end, seg.init_from) == ("decay-75", 60, 75,
                                                             StateRef(MAIN, 60))
  s = seg.schedule_dict()
  assert s["decay_shape"] == "cosine" and s["min_lr_ratio"] == 0.0 and s["total_steps"] == 75
  lr = seg.schedule.build()
  assert float(lr(60)) == pytest.approx(cfg.peak_lr)
  assert float(lr(75)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("bad,field", [
    (dict(name="nope"), "schedule.name"),
    (dict(budgets=()), "schedule.budgets"),
    (dict(budgets=(200, 100)), "budgets"),
    (dict(budgets=(8,), warmup_steps=10), "warmup"),
    (dict(merge_window=10), "schedule.merge_window"),  # wsd_s: no constant-LR main branch
    (dict(name="wsd", merge_window=101), "schedule.merge_window"),
    (dict(name="wsd", merge_window=10, merge_every=10), "schedule.merge_every"),
    (dict(name="constant", merge_window=10, merge_weights="mean"), "schedule.merge_weights"),
])
def test_bad_plans_name_the_field(bad, field):
  with pytest.raises(ValueError, match=field):
    plan_lib.make_plan(sched(name="wsd_s", **{k: v for k, v in bad.items() if k != "name"})
                       if "name" not in bad else sched(**bad, budgets=(100,)))


def test_describe_lists_every_segment():
  text = plan_lib.describe(plan_lib.make_plan(sched(name="wsd", budgets=(100, 200))))
  assert "decay-100" in text and "from main@90" in text and "210 steps" in text

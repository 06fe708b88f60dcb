"""The schedule-aware loss laws (wsdjax.analysis.loss_law, law_fit): the fit recovers the
parameters a synthetic WSD run's curves were made with, one schedule described two ways
gets one prediction, the recommendation and the leave-one-out check, and bad input."""

import dataclasses
import math

import numpy as np
import pytest

from wsdjax.analysis import law_fit, loss_curves, loss_law
from wsdjax.config import base_config
from wsdjax.runtime.errors import ConfigError
from wsdjax.schedule import plan as plan_lib

PEAK = 3e-3
TRUE = {"multi_power": dict(L0=1.5, A=2.0, alpha=0.5, B=0.4, C=2.0, beta=0.6, gamma=0.5),
        "annealing": dict(L0=1.5, A=2.0, alpha=0.5, C=0.02, h=50.0)}
SCALE = dict(delta=0.05, kappa=1.1)


def _config(**schedule):
  cfg = base_config()
  cfg.schedule.name = "wsd"
  cfg.schedule.peak_lr = PEAK
  cfg.schedule.warmup_steps = 8
  cfg.schedule.budgets = (40, 80, 120, 160)
  cfg.schedule.decay_fraction = 0.2
  cfg.schedule.min_lr_ratio = 0.1
  for k, v in schedule.items():
    cfg.schedule[k] = v
  return cfg


def _synthetic_run(law_name: str, noise: float = 0.0, cfg=None, seed: int = 0):
  """RunCurves of a WSD run whose losses follow `law_name` with TRUE parameters: train
  windows of 2 steps on every branch, eval losses (delta + kappa L) at forks and ends."""
  cfg = cfg or _config()
  law = loss_law.BY_NAME[law_name]
  params = TRUE[law_name]
  lineages = loss_curves.plan_lineages(plan_lib.make_plan(cfg.schedule))
  rng = np.random.default_rng(seed)
  train, evals, decayed = [], [], []
  for branch, line in lineages.items():
    curve = loss_law.Curve.of(line.lr, PEAK)
    for stop in range(line.start + 2, line.end + 1, 2):
      mean = law.curve_loss(params, curve, np.arange(max(stop - 2, 1), stop)).mean()
      train.append((branch, stop - 2, stop, float(mean + noise * rng.standard_normal())))
    ends = [line.end] + ([] if line.decayed else [s for s in (32, 64, 96, 128) if s < line.end])
    for step in ends:
      loss = SCALE["delta"] + SCALE["kappa"] * float(law.curve_loss(params, curve, [step])[0])
      evals.append((branch, step, loss))
      if line.decayed:
        decayed.append({"branch": branch, "step": step, "eval_loss": loss,
                        "flops": float(step) * 1e9})
  return loss_curves.RunCurves("synthetic", cfg, lineages, train, evals, decayed, 8)


@pytest.mark.parametrize("law_name", ["multi_power", "annealing"])
def test_the_fit_recovers_the_parameters_the_curves_were_made_with(law_name):
  fit = law_fit.fit_run(_synthetic_run(law_name), law_name)
  for name, value in (TRUE[law_name] | SCALE).items():
    assert fit.params[name] == pytest.approx(value, rel=2e-3, abs=1e-4), name
  assert fit.rmse < 1e-6 and set(fit.se) == set(fit.params)


def test_with_noise_the_identified_parameters_stay_within_their_errors():
  fit = law_fit.fit_run(_synthetic_run("multi_power", noise=0.005), "multi_power")
  for name in ("L0", "A", "alpha", "delta", "kappa"):
    value = (TRUE["multi_power"] | SCALE)[name]
    assert abs(fit.params[name] - value) < 4 * fit.se[name] + 1e-3, name
  assert 0.002 < fit.rmse < 0.01


def test_leave_one_out_predicts_each_held_out_decay_of_a_lawful_run():
  curves = _synthetic_run("multi_power")
  rows = law_fit.leave_one_out(curves, "multi_power")
  assert [r["branch"] for r in rows] == ["decay-40", "decay-80", "decay-120", "decay-160"]
  for r in rows:
    assert abs(r["relative"]) < 1e-3 and r["anchor"] == f"main@{r['step'] - r['step'] // 5}"
    assert r["curve_rmse"] < 1e-3
  power = law_fit.power_leave_one_out(curves)
  assert [set(r) >= {"branch", "measured", "predicted"} for r in power] == [True] * 4


def _fit(law_name="multi_power"):
  return loss_law.Fit(loss_law.BY_NAME[law_name], TRUE[law_name] | SCALE, {}, PEAK, 0.0, 0)


def _prediction(cfg, overrides: str) -> list[dict]:
  curves = loss_curves.RunCurves("none", cfg, {}, [], [], [], 1)
  return law_fit.predict(curves, _fit(), law_fit.parse_scenario(overrides))


@pytest.mark.parametrize("warmup", [0, 10])
def test_one_schedule_described_two_ways_gets_one_prediction(warmup):
  cfg = _config(warmup_steps=warmup, budgets=(100,))
  as_linear = _prediction(cfg, "schedule.name=linear")
  decay = "decay_fraction=1.0" if not warmup else f"decay_steps={100 - warmup}"
  as_wsd = _prediction(cfg, f"schedule.name=wsd {decay}")
  assert len(as_linear) == len(as_wsd) == 1
  assert as_wsd[0]["predicted"] == pytest.approx(as_linear[0]["predicted"], rel=1e-6)
  (steps, loss), (all_steps, all_loss) = as_wsd[0]["curve"], as_linear[0]["curve"]
  assert all_steps[0] == warmup + 1 and all_steps[-1] == steps[-1] == 100
  np.testing.assert_allclose(loss, all_loss[-len(steps):], rtol=1e-6)


def test_predictions_of_overrides_differ_as_their_schedules_do():
  cfg = _config()
  short = _prediction(cfg, "budgets=(200,) decay_fraction=0.1")
  longer = _prediction(cfg, "budgets=(200,) decay_fraction=0.3")
  assert short[0]["branch"] == longer[0]["branch"] == "decay-200"
  assert short[0]["predicted"] != longer[0]["predicted"]
  cfg.schedule.merge_window = 16  # merges set no LR: a cosine scenario ignores them
  cosine = _prediction(cfg, "name=cosine budgets=(160,)")
  assert [r["branch"] for r in cosine] == ["decay-160"]
  wsd_s = _prediction(cfg, "name=wsd_s")
  assert [r["step"] for r in wsd_s] == [40, 88, 144, 208]  # C_i: decays in one lineage


def test_recommendation_is_the_best_candidate_and_names_the_configured_decay():
  curves = _synthetic_run("multi_power")
  rec = law_fit.recommend(curves, _fit(), 160)
  assert rec["configured"] == rec["candidates"][0]
  assert rec["configured"]["decay_steps"] == 32 and rec["configured"]["shape"] == "linear"
  assert rec["fitted_decay_steps"] == (8, 32)
  seen = [c for c in rec["candidates"] if 8 <= c["decay_steps"] <= 32]
  assert [c["seen"] for c in rec["candidates"]] == [c in seen for c in rec["candidates"]]
  assert rec["best"]["predicted"] == min(c["predicted"] for c in seen)
  assert rec["best_any"]["predicted"] == min(c["predicted"] for c in rec["candidates"])
  assert rec["gain"] == rec["configured"]["predicted"] - rec["best"]["predicted"] >= 0
  assert {c["shape"] for c in rec["candidates"]} == {"linear", "cosine", "1-sqrt", "exponential"}


def test_a_run_without_a_decay_is_refused():
  cfg = _config(name="constant")
  curves = _synthetic_run("multi_power", cfg=cfg)
  with pytest.raises(ConfigError, match="no decay branch.*needs at least one decay"):
    law_fit.fit_run(curves, "multi_power")


def test_too_few_points_are_refused():
  curves = _synthetic_run("multi_power")
  few = loss_curves.RunCurves("few", curves.config, curves.lineages,
                              [t for t in curves.train if t[0] != "main"][:6], curves.evals[:2],
                              curves.decayed, 8)
  with pytest.raises(ConfigError, match="train.log_every: the run has 8 loss points after the "
                     "warmup; the multi_power law needs at least 11"):
    law_fit.fit_run(few, "multi_power")


@pytest.mark.parametrize("text,match", [
    ("decay_shape=zigzag", "--predict: 'decay_shape=zigzag': schedule.decay_shape"),
    ("budgets=(9,)", "--predict: 'budgets=\\(9,\\)': schedule.warmup_steps: warmup"),
    ("peak_lr=fast", "--predict: 'peak_lr=fast': "),
    ("wobble=3", "--predict: 'wobble=3': schedule.wobble: unknown schedule field"),
    ("decay_fraction", "--predict: 'decay_fraction' is not field=value"),
])
def test_a_schedule_the_library_cannot_build_is_named(text, match):
  with pytest.raises(ConfigError, match=match):
    _prediction(_config(), text)


def test_a_non_finite_loss_in_the_log_is_refused(tmp_path):
  curves = _synthetic_run("multi_power")
  bad = loss_curves.RunCurves("w", curves.config, curves.lineages,
                              curves.train[:3] + [("decay-80", 70, 72, math.nan)], [], [], 8)
  with pytest.raises(ConfigError, match="non-finite train loss \\(nan\\) at decay-80@72"):
    loss_curves.check_finite(bad)


def test_curve_warmup_and_changes():
  lr = [0.1, 0.2, 0.3, 0.3, 0.2, 0.1, 0.3]
  curve = loss_law.Curve.of(lr, 0.3)
  assert curve.warmup_end == 2
  k, delta = curve.changes()
  assert k.tolist() == [4, 5, 6]
  np.testing.assert_allclose(delta, [1 / 3, 1 / 3, -2 / 3])
  np.testing.assert_allclose(curve.cumulative[-1], sum(lr) / 0.3)


def test_window_starts_follow_segments():
  line = loss_curves.Lineage("main", np.ones(20), 0, False, (0, 8, 12))
  assert line.window_start(6, 10) == 8  # main resumed at 8 (a WSD-S decay in between)
  assert line.window_start(10, 12) == 10


def test_a_long_decay_is_summed_in_blocks_that_change_the_loss_little():
  lr = np.concatenate([np.linspace(0.1, 1.0, 100), np.ones(20_000), np.linspace(1, 0.1, 5000)])
  curve = loss_law.Curve.of(lr, 1.0)
  k, delta = curve.changes()
  assert len(k) == loss_law.MAX_CHANGES and delta.sum() == pytest.approx(0.9)
  exact = dataclasses.replace(curve)
  states = np.arange(20_100, len(lr) + 1, 250)
  for law_name in ("multi_power", "annealing"):
    law = loss_law.BY_NAME[law_name]
    grouped = law.curve_loss(TRUE[law_name], curve, states)
    original, loss_law.MAX_CHANGES = loss_law.MAX_CHANGES, 10 ** 6
    try:
      full = law.curve_loss(TRUE[law_name], exact, states)
    finally:
      loss_law.MAX_CHANGES = original
    np.testing.assert_allclose(grouped, full, rtol=2e-4)


def test_the_run_it_line_names_a_saved_fork_or_the_saves_near_it():
  from wsdjax.analysis import law_report
  pick = {"decay_steps": 20, "shape": "cosine"}
  assert law_report._run_it("W", 116, pick, [112, 116, 120]) == (
      "  run it:   python -m wsdjax.branch --workdir W --from_step 116 --decay_steps 20 "
      "--decay_shape cosine")
  assert law_report._run_it("W", 122, pick, [112, 116, 120, 128]) == (
      "  run it:   main is not saved at step 122 (saved nearby: 116, 120, 128): decay from "
      "a saved step, or plan this decay in a run")

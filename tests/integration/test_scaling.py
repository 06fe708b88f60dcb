"""The scaling fit (wsdjax.analysis.scaling, python -m wsdjax.fit, compare --fit): it recovers a
known power law, predicts a held-out budget, and says when there are too few budgets."""

import functools
import math

import numpy as np
import pytest

from conftest import run_cli
from wsdjax.analysis import scaling
from wsdjax.runtime.errors import ConfigError

E, A, ALPHA = 1.7, 3.0e4, 0.25


def law(c):
  return E + A * np.asarray(c) ** (-ALPHA)


def test_the_fit_recovers_a_known_law_and_predicts_the_held_out_budget():
  compute = [1e15 * 2 ** i for i in range(6)]
  rng = np.random.default_rng(0)
  loss = law(compute) * (1 + 1e-4 * rng.standard_normal(6))
  f = scaling.fit(compute, loss)
  assert f.E == pytest.approx(E, abs=0.02) and f.alpha == pytest.approx(ALPHA, rel=0.05)
  assert f.A == pytest.approx(A, rel=0.3) and all(math.isfinite(v) for v in f.se.values())
  assert f.predict(4e16) == pytest.approx(float(law(4e16)), rel=1e-3)
  check = scaling.holdout(compute, list(loss))
  assert check["compute"] == compute[-1] and abs(check["error"]) < 2e-3
  text = scaling.report("run", compute, loss)
  assert "held out the largest budget" in text and "alpha = 0.2" in text


def test_too_few_budgets_are_named():
  with pytest.raises(ConfigError, match="schedule.budgets: a scaling fit needs"):
    scaling.fit([1e15, 2e15], [3.0, 2.9])
  assert scaling.holdout([1, 2, 3], [3.0, 2.9, 2.85]) is None
  assert "held-out check needs 4 or more budgets" in scaling.report(
      "run", [1e15, 2e15, 4e15], law([1e15, 2e15, 4e15]))


def test_fit_cli_on_a_run_with_four_budgets(tmp_path):
  cli = functools.partial(run_cli, timeout=600)
  out = cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
            "--config.model.seq_len=32", "--config.train.global_batch_size=8",
            "--config.schedule.name=wsd", "--config.schedule.budgets=(10,20,30,40)",
            "--config.schedule.warmup_steps=2", "--config.schedule.decay_fraction=0.2")
  assert out.returncode == 0, out.stderr[-2000:]
  fit = cli("wsdjax.fit", "--workdir", str(tmp_path))
  assert fit.returncode == 0, fit.stderr[-2000:]
  lines = fit.stdout.strip().splitlines()
  assert lines[0].startswith("run: L(C) = E + A C^-alpha over 4 budgets: E = ")
  assert lines[2].startswith("run: held out the largest budget (") and "measured" in lines[2]
  bad = cli("wsdjax.fit", "--workdir", str(tmp_path), "--predict_flops", "-1")
  assert bad.returncode == 2 and bad.stderr.startswith("wsdjax: --predict_flops: must be > 0")


def test_compare_fit_report_fits_each_strategy_with_enough_budgets(tiny_config):
  from wsdjax.analysis import compare
  from wsdjax.model import transformer as model
  per_token = model.flops_per_token(tiny_config.model)
  tokens = [1000 * 2 ** i for i in range(4)]
  rows = [dict(strategy="wsd", tokens=t, eval_loss=float(law(t * per_token))) for t in tokens]
  rows += [dict(strategy="wsd_s", tokens=t, eval_loss=3.0) for t in tokens[:2]]
  text = compare.fit_report(tiny_config, rows)
  assert "WSD: L(C) = E + A C^-alpha over 4 budgets" in text
  assert "WSD: held out the largest budget" in text
  assert "WSD-S: the fit needs 3 or more budgets, has 2" in text

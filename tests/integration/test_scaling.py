"""The fits of python -m wsdjax.fit and compare --fit: the power law (wsdjax.analysis.scaling)
recovers a known law, predicts a held-out budget and says when there are too few budgets;
the command fits a schedule-aware law to a run, checks, predicts and refuses bad input."""

import functools
import json
import math
import shlex
import shutil

import numpy as np
import pytest

from conftest import run_cli
from wsdjax.analysis import law_report, scaling
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


def test_fit_cli_on_a_run_with_three_budgets(tmp_path):
  """One tiny WSD run, fitted, checked, predicted and refused as a user would try it."""
  cli = functools.partial(run_cli, timeout=600)
  run = tmp_path / "run"
  out = cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(run),
            "--config.model.seq_len=32", "--config.train.global_batch_size=8",
            "--config.train.log_every=1", "--config.schedule.name=wsd",
            "--config.schedule.budgets=(10,20,30)", "--config.schedule.warmup_steps=2",
            "--config.schedule.decay_fraction=0.2")
  assert out.returncode == 0, out.stderr[-2000:]
  report, plot = tmp_path / "fit.json", tmp_path / "fit.png"
  fit = cli("wsdjax.fit", "--workdir", str(run), "--json", str(report), "--plot", str(plot),
            "--predict", "schedule.budgets=(36,) schedule.decay_shape=1-sqrt")
  assert fit.returncode == 0, fit.stderr[-2000:]
  assert fit.stdout.startswith(f"multi_power law fitted to {run}: ")
  assert "leave-one-decay-out" in fit.stdout and "recommended decay for budget 30" in fit.stdout
  result = json.loads(report.read_text())
  assert [r["branch"] for r in result["leave_one_out"]] == [f"decay-{b}" for b in (10, 20, 30)]
  for row in result["leave_one_out"]:
    assert math.isfinite(row["predicted"]) and row["measured"] > 0
  assert [p["branch"] for p in result["predictions"]] == ["decay-36"]
  assert set(result["params"]) == {"L0", "A", "alpha", "B", "C", "beta", "gamma", "delta",
                                   "kappa"}
  assert plot.stat().st_size > 10_000
  # The recommendation's `draw it` line works as printed (configs/from_run.py:W).
  draw = next(line for line in fit.stdout.splitlines() if "draw it:" in line)
  args = shlex.split(draw.split("python -m wsdjax.lr", 1)[1])
  drawn = cli("wsdjax.lr", *args[:-1], str(tmp_path / "decay.png"))
  assert drawn.returncode == 0 and "decayed checkpoints at steps: 30" in drawn.stdout, drawn.stderr
  power = law_report.format_report(law_report.analyse(run, "power"))
  assert power.startswith("power law L(C) = E + A C^-alpha through 3 decayed")
  _refusals(cli, run, tmp_path)


def _refusals(cli, run, tmp_path):
  """Bad input: one line on stderr, exit 2 (the command), a ConfigError naming the field
  (the library), the run untouched."""
  before = sorted(p.name for p in run.iterdir())
  nan_run, constant_run = tmp_path / "nan", tmp_path / "constant"
  shutil.copytree(run, nan_run)
  with open(nan_run / "metrics.jsonl", "a") as f:
    f.write('{"step": 18, "branch": "decay-20", "train_loss": NaN}\n')
  shutil.copytree(run, constant_run)
  config = json.loads((constant_run / "config.json").read_text())
  config["schedule"]["name"] = "constant"
  (constant_run / "config.json").write_text(json.dumps(config))
  bad = cli("wsdjax.fit", "--workdir", str(nan_run))
  assert bad.returncode == 2 and bad.stderr.startswith(
      "wsdjax: --workdir: metrics.jsonl logs a non-finite train loss (nan) at decay-20@18")
  assert len(bad.stderr.strip().splitlines()) == 1
  bad = cli("wsdjax.fit", "--workdir", str(run), "--predict_flops", "-1")
  assert bad.returncode == 2 and bad.stderr.startswith("wsdjax: --predict_flops: must be > 0")
  bad = cli("wsdjax.fit", "--workdir", str(run), "--law", "power", "--plot",
            str(tmp_path / "power.png"))
  assert bad.returncode == 2 and bad.stderr.startswith("wsdjax: --plot: draws a schedule-")
  cases = [((run, "multi_power", ["schedule.decay_shape=zigzag"]),
            "--predict: 'schedule.decay_shape=zigzag': schedule.decay_shape"),
           ((run, "power", ["budgets=(50,)"]), "--predict: the power law knows compute"),
           ((constant_run, "multi_power", []), f"--workdir: {constant_run} has no decay branch")]
  for args, message in cases:
    with pytest.raises(ConfigError) as error:
      law_report.analyse(*args)
    assert str(error.value).startswith(message)
  assert sorted(p.name for p in run.iterdir()) == before


def test_compare_fit_report_fits_each_strategy_with_enough_budgets(tiny_config):
  from wsdjax.analysis import compare
  from wsdjax.model import transformer as model
  per_token = model.flops_per_token(tiny_config.model)
  tokens = [1000 * 2 ** i for i in range(4)]
  rows = [dict(strategy="wsd", tokens=t, eval_loss=float(law(t * per_token))) for t in tokens]
  rows += [dict(strategy="wsd_s", tokens=t, eval_loss=3.0) for t in tokens[:2]]
  text = compare.fit_report(tiny_config, rows)  # no workdir: the power law per series
  assert "WSD: L(C) = E + A C^-alpha over 4 budgets" in text
  assert "WSD: held out the largest budget" in text
  assert "WSD-S: the fit needs 3 or more budgets, has 2" in text

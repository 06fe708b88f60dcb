"""`wsdjax.river_valley`: the per-fork table and plot from a run's manifest and metrics,
and the CLI's one-line errors. (The notebook test trains the experiment end to end.)"""

import io
import json

import pytest

import river_valley as river_valley_config
from conftest import run_cli
from wsdjax import config as config_lib
from wsdjax.analysis import compare, river_valley


def fake_run(workdir, forks=((20, 2.84, 2.54), (60, 2.51, 2.42), (100, 2.47, 2.41))):
  """A workdir whose manifest holds main fork points and decayed branches (20 steps)."""
  entries, metrics = [], []
  for fork, main, dec in forks:
    entries.append(dict(branch="main", step=fork, fork_point=True, decayed=False,
                        eval_loss=main))
    entries.append(dict(branch=f"decay-{fork + 20}", step=fork + 20, parent="main",
                        fork_step=fork, decayed=True, eval_loss=dec, start_eval_loss=main,
                        gap=main - dec))
    metrics.append(dict(step=fork, branch="main", eval_loss=main))
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "checkpoints" / "manifest.json").write_text(json.dumps(entries))
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_report_tables_the_gap_and_distance_to_optimum_per_fork(tmp_path):
  cfg = river_valley_config.get_config()
  config_lib.validate(cfg, 1)
  h = compare.entropy_rate(cfg)
  assert 0 < h < 4.2  # below log(64): the chain is far from uniform
  fake_run(tmp_path)
  table = river_valley.report(cfg, tmp_path, stream=io.StringIO())
  assert [(r["branch"], r["fork_step"], r["step"]) for r in table] == [
      ("decay-40", 20, 40), ("decay-80", 60, 80), ("decay-120", 100, 120)]
  assert table[0]["gap"] == pytest.approx(0.30)
  assert table[1]["decayed_to_optimum"] == pytest.approx(2.42 - h)
  assert table[2]["main_to_optimum"] == pytest.approx(2.47 - h)
  csv_rows = (tmp_path / "river_valley.csv").read_text().splitlines()
  assert csv_rows[0] == ",".join(river_valley.FIELDS) and len(csv_rows) == 4
  assert "| decay-80 | 60 | 80 | 2.5100 | 2.4200 | 0.0900 |" in (
      tmp_path / "river_valley.md").read_text()
  assert (tmp_path / "river_valley.png").stat().st_size > 10_000


def test_report_needs_the_bigram_optimum(tmp_path):
  cfg = river_valley_config.get_config()
  cfg.data.source = "bundled"
  with pytest.raises(config_lib.ConfigError, match="data.source"):
    river_valley.report(cfg, tmp_path)


def test_cli_bad_arguments_are_one_line_errors(tmp_path):
  cfg = "configs/river_valley.py"
  for args, start in [
      (["--config", cfg], "wsdjax: --workdir: missing"),
      (["--config", cfg, "--workdir", str(tmp_path), "--config.data.source=bundled"],
       "wsdjax: data.source: is 'bundled'"),
  ]:
    out = run_cli("wsdjax.river_valley", *args)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    assert out.stderr.startswith(start) and len(out.stderr.strip().splitlines()) == 1

"""`wsdjax.compare`: run configs at equal compute, the results table and ordering verdict,
the CLI's one-line errors, and (slow) a whole comparison with its rerun."""

import csv
import functools
import io

import pytest

import compare_tiny
from conftest import one_device_mesh, run_cli
from wsdjax.analysis import compare
from wsdjax import config as config_lib


def small_config(**compare_fields):
  c = compare_tiny.get_config()
  c.compare.update(**compare_fields)
  return c


def test_runs_share_everything_but_the_schedule_at_equal_compute():
  cfg = small_config(cosine=True)
  runs = compare.runs(cfg)
  assert [r.dirname for r in runs] == ["wsd", "wsd_s", "cyclic_cosine", "cosine-20",
                                       "cosine-40"]
  for r in runs:
    config_lib.validate(r.config)
    assert "compare" not in r.config
    assert r.config.model == cfg.model and r.config.data == cfg.data
    assert r.config.seed == cfg.seed and r.config.train == cfg.train
  by = {r.dirname: r.config.schedule for r in runs}
  assert by["wsd"].budgets == by["wsd_s"].budgets == (20, 40)
  # C_i = B_i + sum_{j<i} d_j with d = (4, 8): cyclic cosine / cosine end there.
  assert compare.checkpoint_steps(cfg) == [20, 44]
  assert by["cyclic_cosine"].budgets == (20, 44)
  assert by["cosine-20"].budgets == (20,) and by["cosine-40"].budgets == (44,)
  cfg.compare.equal_compute = False
  by = {r.dirname: r.config.schedule for r in compare.runs(cfg)}
  assert by["cyclic_cosine"].budgets == (20, 40) and by["cosine-40"].budgets == (40,)
  assert [r.dirname for r in compare.runs(cfg, only=["wsd_s"])] == ["wsd_s"]


@pytest.mark.parametrize("field,value,match", [
    ("strategies", ("wsd", "adam"), "compare.strategies"),
    ("strategies", (), "compare.strategies"),
    ("strategies", ("wsd", "wsd"), "compare.strategies"),
    ("variants", (("x", "adam", ()),), "compare.variants"),
    ("variants", (("x", "wsd", (("schedule.name", "wsd_s"),)),), "compare.variants"),
    ("variants", (("x", "wsd", ()), ("x", "wsd_s", ())), "compare.variants"),
    ("variants", (("x", "wsd", (("schedule.bogus", 1),)),), "unknown field"),
    ("variants", (("x", "wsd", (("schedule.decay_overrides.b2", 2.0),)),), r"b2.*x run"),
])
def test_check_refuses_bad_compare_sections(field, value, match):
  cfg = small_config()
  cfg.compare[field] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    compare.check(cfg)


def test_check_names_the_run_of_a_bad_shared_field():
  cfg = small_config()
  cfg.schedule.decay_steps = 5  # only wsd takes a fixed decay length
  with pytest.raises(config_lib.ConfigError, match=r"schedule\.decay_steps.*wsd_s run"):
    compare.check(cfg)


def rows_for(losses):
  """Result rows of budgets 20 and 40 with the given {strategy: (loss20, loss40)}."""
  rows = []
  for s, pair in losses.items():
    for b, step, loss in zip((20, 40), (20, 44 if s != "wsd" else 40), pair):
      rows.append(dict(strategy=s, budget=b, run=s, checkpoint=f"decay-{step}", step=step,
                       tokens=step * 256, run_flops=1e9 * (20 if b == 20 else 44),
                       run_steps=20 if b == 20 else 44, eval_loss=loss, gap=0.1,
                       gap_to_optimum=None))
  return rows


def test_ordering_verdict_table_and_csv():
  rows = rows_for({"wsd": (3.0, 2.8), "wsd_s": (3.0, 2.7), "cyclic_cosine": (3.1, 2.6)})
  verdicts = compare.ordering(rows)
  assert [(v["budget"], v["holds"], v["wsd_le_cyclic"]) for v in verdicts] == [
      (20, True, True), (40, False, False)]
  md = compare.to_markdown(small_config(), rows, ["compute.png"])
  assert "| WSD-S | 40 | decay-44 | 44 |" in md
  assert "| 40 | 2.7000 | 2.8000 | 2.6000 | yes | **no** | **no** |" in md
  assert "![compute.png](compute.png)" in md and "Entropy rate" in md
  parsed = list(csv.DictReader(io.StringIO(compare.to_csv(rows))))
  assert tuple(parsed[0]) == compare.CSV_FIELDS and len(parsed) == 6
  assert "does NOT hold" in compare.format_table(small_config(), rows)
  # A budget without all three strategies gets no verdict.
  assert compare.ordering([r for r in rows if r["strategy"] != "wsd"]) == []


cli = functools.partial(run_cli, "wsdjax.compare")


def test_cli_bad_arguments_are_one_line_errors(tmp_path):
  w = str(tmp_path / "w")
  cfg = "configs/compare_tiny.py"
  for args, start in [
      (["--workdir", w], "wsdjax: --config: missing"),
      (["--config", cfg], "wsdjax: --workdir: missing"),
      (["--config", cfg, "--workdir", w, "--only", "adam"], "wsdjax: --only: 'adam'"),
      (["--config", cfg, "--workdir", w, "--only", "cosine"], "wsdjax: --only: 'cosine'"),
      (["--config", cfg, "--workdir", w, "--bogus"], "wsdjax: --bogus: unknown flag"),
      (["--config", cfg, "--workdir", w, "--config.compare.strategies=('wsd','sgd')"],
       "wsdjax: compare.strategies:"),
      (["--config", "configs/nope.py", "--workdir", w], "wsdjax: --config: cannot load it"),
  ]:
    out = cli(*args)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    assert out.stderr.startswith(start), (args, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_compare_runs_reports_and_reuses_finished_runs(tmp_path):
  cfg = small_config()  # cosine runs: see the run configs test (each is one more run)
  cfg.schedule.update(budgets=(8, 16), warmup_steps=2)
  cfg.model.seq_len = 16
  cfg.train.update(global_batch_size=4, eval_every=4, log_every=1)
  out = io.StringIO()
  rows = compare.compare(cfg, tmp_path, mesh=one_device_mesh(), stream=out)
  # d = (2, 3): WSD-S checkpoints at C = (8, 18); equal compute per budget for everyone.
  got = {(r["strategy"], r["budget"]): (r["checkpoint"], r["step"], r["run_steps"])
         for r in rows}
  assert got == {("wsd", 8): ("decay-8", 8, 8), ("wsd_s", 8): ("decay-8", 8, 8),
                 ("cyclic_cosine", 8): ("decay-8", 8, 8),
                 ("wsd", 16): ("decay-16", 16, 18), ("wsd_s", 16): ("decay-18", 18, 18),
                 ("cyclic_cosine", 16): ("decay-18", 18, 18)}
  for budget in (8, 16):
    flops = {r["run_flops"] for r in rows if r["budget"] == budget}
    assert len(flops) == 1
  tokens = {r["strategy"]: r["tokens"] for r in rows if r["budget"] == 16}
  assert tokens["wsd"] == 16 * 64 and tokens["wsd_s"] == 18 * 64
  # The first WSD and WSD-S checkpoints are the same computation.
  first = {r["strategy"]: r["eval_loss"] for r in rows if r["budget"] == 8}
  assert first["wsd"] == pytest.approx(first["wsd_s"])
  assert all(r["eval_loss"] > r["gap_to_optimum"] > 0 for r in rows)
  for name in ("results.md", "results.csv", "losses.png", "compute.png", "schedules.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  table = list(csv.DictReader((tmp_path / "results.csv").open()))
  assert len(table) == 6 and {r["run"] for r in table} == {"wsd", "wsd_s", "cyclic_cosine"}
  md = (tmp_path / "results.md").read_text()
  assert md.count("\n| WSD-S | ") == 2 and "Paper's ordering per budget" in md
  # A rerun (here --only wsd_s) trains nothing and reports every run again.
  again = io.StringIO()
  rows2 = compare.compare(cfg, tmp_path, only=["wsd_s"], mesh=one_device_mesh(), stream=again)
  assert "segment " not in again.getvalue() and "[1/1] WSD-S" in again.getvalue()
  assert rows2 == rows
  # --fit: the loss law of each run, checked by leaving each decay out, and its figure;
  # here the lineages WSD has not (test_scaling fits WSD): main resumed from a decay, and
  # a cosine cycle after another.
  cfg.compare.strategies = ("wsd_s", "cyclic_cosine")
  text = compare.fit_report(cfg, rows, tmp_path)
  for label, run in (("WSD-S", "wsd_s"), ("cyclic cosine", "cyclic_cosine")):
    assert f"== {label}\nmulti_power law fitted to {tmp_path / run}" in text
    assert (tmp_path / f"loss_law-{run}.png").stat().st_size > 0
  assert text.count("leave-one-decay-out") == 2 and "\n    decay-18     18 " in text
  assert not (tmp_path / "loss_law-wsd.png").exists()


@pytest.mark.slow
def test_merge_ema_constant_and_recipe_rows_at_equal_compute(tmp_path):
  cfg = small_config(strategies=("wsd", "constant"), variants=(
      ("WSD b2=0.99", "wsd", (("schedule.decay_overrides.b2", 0.99),)),))
  cfg.schedule.update(budgets=(8, 16), warmup_steps=2, merge_window=4)
  cfg.model.seq_len = 16
  cfg.train.update(global_batch_size=4, eval_every=4, ema_decays=(0.9,))
  rows = compare.compare(cfg, tmp_path, mesh=one_device_mesh(), stream=io.StringIO())
  got = {(r["series"], r["budget"]): (r["checkpoint"], r["step"], r["run_steps"])
         for r in rows}
  # d = (2, 3), forks at 6 and 13; with merges main also runs to each budget, so WSD's
  # main@16 comes after 16 + 2 + 3 run steps; the constant run spends exactly B.
  assert got == {
      ("WSD", 8): ("decay-8", 8, 8), ("WSD", 16): ("decay-16", 16, 18),
      ("WSD EMA 0.9", 8): ("ema-0.9", 8, 8), ("WSD EMA 0.9", 16): ("ema-0.9", 16, 18),
      ("WSD merge (uniform, 4 steps)", 8): ("merge-8", 8, 10),
      ("WSD merge (uniform, 4 steps)", 16): ("merge-16", 16, 21),
      ("constant LR", 8): ("main", 8, 8), ("constant LR", 16): ("main", 16, 16),
      ("constant LR EMA 0.9", 8): ("ema-0.9", 8, 8),
      ("constant LR EMA 0.9", 16): ("ema-0.9", 16, 16),
      ("constant LR merge (uniform, 4 steps)", 8): ("merge-8", 8, 8),
      ("constant LR merge (uniform, 4 steps)", 16): ("merge-16", 16, 16),
      **{(f"WSD b2=0.99{k[3:]}", b): v for (k, b), v in [
          (("WSD", 8), ("decay-8", 8, 8)), (("WSD", 16), ("decay-16", 16, 18)),
          (("WSD EMA 0.9", 8), ("ema-0.9", 8, 8)),
          (("WSD EMA 0.9", 16), ("ema-0.9", 16, 18)),
          (("WSD merge (uniform, 4 steps)", 8), ("merge-8", 8, 10)),
          (("WSD merge (uniform, 4 steps)", 16), ("merge-16", 16, 21))]}}
  # Each row's family (its run's label) and kind, which compute.png groups by.
  assert {(r["series"], r["family"], r["kind"]) for r in rows if r["budget"] == 8} == {
      ("WSD", "WSD", "checkpoint"), ("WSD EMA 0.9", "WSD", "EMA 0.9"),
      ("WSD merge (uniform, 4 steps)", "WSD", "merge (uniform, 4 steps)"),
      ("constant LR", "constant LR", "checkpoint"),
      ("constant LR EMA 0.9", "constant LR", "EMA 0.9"),
      ("constant LR merge (uniform, 4 steps)", "constant LR", "merge (uniform, 4 steps)"),
      ("WSD b2=0.99", "WSD b2=0.99", "checkpoint"),
      ("WSD b2=0.99 EMA 0.9", "WSD b2=0.99", "EMA 0.9"),
      ("WSD b2=0.99 merge (uniform, 4 steps)", "WSD b2=0.99", "merge (uniform, 4 steps)")}
  by = {(r["series"], r["budget"]): r["eval_loss"] for r in rows}
  # The recipe changes the decays only: its merges (of main) equal WSD's, its decays differ.
  assert by[("WSD b2=0.99 merge (uniform, 4 steps)", 16)] == pytest.approx(
      by[("WSD merge (uniform, 4 steps)", 16)], abs=1e-6)
  assert by[("WSD b2=0.99", 16)] != pytest.approx(by[("WSD", 16)], abs=1e-6)
  assert compare.ordering(rows) == []  # no WSD-S or cyclic cosine: no paper verdict
  md = (tmp_path / "results.md").read_text()
  assert "| WSD b2=0.99 merge (uniform, 4 steps) | 16 | merge-16 |" in md
  assert (tmp_path / "compute.png").stat().st_size > 0
  assert (tmp_path / "variant-WSD_b2=0.99" / "checkpoints").is_dir()

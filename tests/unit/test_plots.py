"""The comparison figures (wsdjax.analysis.plots) stay readable, checked on the drawn layout
(no pixel comparisons): legends off the axes, every text inside the figure, each budget
named once. Synthetic rows and runs: nothing trains."""

import json

import compare_endings
import pytest
from matplotlib.text import Text

from wsdjax.analysis import compare, plots
from wsdjax.schedule import plan as plan_lib

BUDGETS = (40, 80, 120, 160)
LONG = "WSD 1-sqrt b2=0.999 with a cooldown recipe whose name goes on and on and on"
KINDS = ("checkpoint", "merge (uniform, 16 steps)", "EMA 0.9", "EMA 0.98")


def endings_rows(families=("WSD", LONG, "constant LR"), kinds=KINDS) -> list[dict]:
  """compare_endings-like rows: each family x kind x budget, run FLOPs per family."""
  rows = []
  for family in families:
    for j, kind in enumerate(kinds):
      constant = family == "constant LR"  # its run spends B; WSD's more, merges more
      for b in BUDGETS:
        rows.append(dict(strategy="constant" if constant else "wsd", family=family,
                         kind=kind, budget=b, eval_loss=3 - b / 100 + j / 50,
                         run_flops=1e9 * (b + (0 if constant else b // 5) + 4 * (j == 1))))
  return rows


def texts(fig) -> list[Text]:
  """The visible, non-empty texts of a figure (titles, labels, ticks, legends; a tick
  label out of the view is "visible" too, though not drawn)."""
  return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def check_readable(fig) -> None:
  """Drawn: everything inside the figure (titles, ticks, labels, legends), no legend over
  any axes' data area."""
  fig.canvas.draw()
  drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
  assert (drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= fig.get_figwidth() + 0.01
          and drawn.y1 <= fig.get_figheight() + 0.01), (drawn, fig.get_size_inches())
  legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
  assert legends
  for legend in legends:
    for ax in fig.axes:
      assert not legend.get_window_extent().overlaps(ax.get_window_extent())


@pytest.fixture(autouse=True)
def close_figures():
  yield
  plots._plt().close("all")


def write_run(folder, decay=True) -> None:
  """A finished-looking run: metrics.jsonl (main, one decay branch) and a manifest."""
  (folder / "checkpoints").mkdir(parents=True)
  lines = [dict(branch="main", step=s, train_loss=3 - s / 100) for s in range(0, 80, 2)]
  lines += [dict(branch="main", step=s, eval_loss=3 - s / 100) for s in (32, 64)]
  if decay:
    lines += [dict(branch="decay-40", step=s, train_loss=3 - s / 90) for s in range(32, 41)]
  (folder / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
  manifest = [dict(branch="main", step=32, fork_point=True)]
  if decay:
    manifest.append(dict(branch="decay-40", step=40, decayed=True, eval_loss=2.5))
  (folder / "checkpoints" / "manifest.json").write_text(json.dumps(manifest))


def test_compute_figure_has_a_panel_per_kind_and_its_legend_beside_them():
  rows = endings_rows()
  colors = plots.family_colors(["WSD", "constant LR", LONG], {"WSD": "C0"})
  fig = plots.compute_figure(rows, colors, entropy_rate=1.5,
                             kinds={k: f"panel {k}" for k in reversed(KINDS)})
  check_readable(fig)
  titles = [ax.get_title(loc="left") for ax in fig.axes]
  assert titles == [f"panel {k}" for k in reversed(KINDS)]
  # One line per family per panel (plus, below the first, the first panel's lines faintly).
  assert [len(ax.get_lines()) for ax in fig.axes] == [3 + 1] + [6 + 1] * 3
  legend = fig.legends[0]
  assert [t.get_text() for t in legend.get_texts()][:3] == ["WSD", "constant LR", LONG]
  assert [h.get_color() for h in legend.legend_handles[:3]] == ["C0", "C4", "C5"]


def test_compute_figure_names_each_budget_once():
  fig = plots.compute_figure(endings_rows())
  fig.canvas.draw()
  shown = [t.get_text() for t in texts(fig)]
  for b in BUDGETS:
    assert shown.count(f"B={b}") == 1, shown


def test_compute_figure_of_plain_strategy_rows():
  """compare_small's rows: no family or kind (one panel, by series), equal FLOPs per budget;
  rows without a loss are left out; no rows at all still draw."""
  rows = [dict(strategy=s, series=s, budget=b, run_flops=1e9 * b,
               eval_loss=None if s == "cosine" and b == 40 else 3 - b / 100)
          for s in ("wsd", "wsd_s", "cyclic_cosine", "cosine") for b in BUDGETS]
  fig = plots.compute_figure(rows, entropy_rate=1.2)
  check_readable(fig)
  assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 4 + 1
  assert [t.get_text() for t in fig.legends[0].get_texts()][-1].startswith("entropy rate")
  plots.compute_figure([]).canvas.draw()


def test_losses_figure_titles_fit_and_legend_sits_above(tmp_path):
  write_run(tmp_path / "wsd")
  write_run(tmp_path / "constant", decay=False)
  fig = plots.losses_figure([("WSD", "C0", [tmp_path / "wsd"]),
                             (LONG + " " + LONG, "C5", [tmp_path / "wsd"]),
                             ("constant LR", "C9", [tmp_path / "constant"])])
  check_readable(fig)
  legend = fig.legends[0].get_window_extent()
  assert all(legend.y0 >= ax.get_window_extent().y1 for ax in fig.axes)
  assert "\n" in fig.axes[1].get_title(loc="left")  # the long name wrapped
  plots.plot_losses([("WSD", "C0", [tmp_path / "wsd"])], tmp_path / "losses.png")
  assert (tmp_path / "losses.png").stat().st_size > 0


def test_schedules_figure_of_the_endings_comparison():
  cfg = compare_endings.get_config("bundled")
  groups = {}
  for run in compare.runs(cfg):
    groups.setdefault(run.label, []).append(plan_lib.make_plan(run.config.schedule))
  colors = plots.family_colors(list(groups))
  fig = plots.schedules_figure([(label + " " + LONG, colors[label], plans)
                                for label, plans in groups.items()])
  check_readable(fig)
  assert len(fig.axes) == 5


@pytest.mark.parametrize("where", ["right", "left", "top", "bottom"])
def test_legend_outside_a_figure(where):
  fig, axes = plots._plt().subplots(2, 1)
  for ax in axes:
    ax.plot(range(10), label="a curve with a rather long label")
    ax.plot(range(10)[::-1], label="another")
  legend = plots.legend_outside(fig, where=where)
  assert [t.get_text() for t in legend.get_texts()] == [
      "a curve with a rather long label", "another"]  # one entry per label
  check_readable(fig)


def test_legend_outside_an_axes():
  fig, ax = plots._plt().subplots()  # no layout engine: legend_outside turns one on
  ax.plot(range(10), label="a curve with a rather long label")
  plots.legend_outside(ax, title="runs")
  check_readable(fig)
  with pytest.raises(ValueError, match="right for an Axes; got 'bottom'"):
    plots.legend_outside(ax, where="bottom")
  with pytest.raises(ValueError, match="where must be one of"):
    plots.legend_outside(fig, where="inside")
  tight, ax = plots._plt().subplots(layout="tight")
  with pytest.raises(ValueError, match="needs constrained layout"):
    plots.legend_outside(ax)


def test_compare_panels_checkpoints_then_merges_then_shadows():
  rows = endings_rows(kinds=("EMA 0.98", "EMA 0.9", "merge (uniform, 16 steps)",
                             compare.CHECKPOINT))
  assert list(compare._kind_titles(rows)) == [
      compare.CHECKPOINT, "merge (uniform, 16 steps)", "EMA 0.9", "EMA 0.98"]
  assert "constant LR" in compare._kind_titles(rows)[compare.CHECKPOINT]


def test_family_colors_keep_presets_and_give_variants_free_colours():
  got = plots.family_colors(["WSD", "WSD 1-sqrt", "constant LR", "WSD b2"],
                            {"WSD": "C0", "constant LR": "C9", "WSD-S": "C3"})
  assert got == {"WSD": "C0", "WSD 1-sqrt": "C4", "constant LR": "C9", "WSD b2": "C5"}
  many = plots.family_colors([f"v{i}" for i in range(12)])
  assert len(set(many.values())) == len(plots.PALETTE)

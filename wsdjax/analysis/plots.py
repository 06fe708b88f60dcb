"""Plots of finished runs (matplotlib, Agg backend): losses of each branch against step,
eval loss against compute, LR schedules of a plan, and the river-valley picture.

Everything here reads what a run left in its workdir (metrics.jsonl, the manifest) or a
plan; nothing trains. Each function writes one PNG and returns nothing.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import Sequence

import numpy as np
from etils import epath

from wsdjax.schedule import plan as plan_lib
from wsdjax.schedule.spec import ScheduleSpec

# One colour per strategy, the same in every figure; other families (variants of a
# strategy) take PALETTE's colours not yet taken, the strategies' own last. Orange (C1)
# is kept for decay branches.
COLORS = {"wsd": "C0", "wsd_s": "C3", "cyclic_cosine": "C2", "cosine": "C7", "constant": "C9"}
PALETTE = ("C4", "C5", "C6", "C8", "C0", "C3", "C2", "C9", "C7")
DECAY_COLOR = "C1"
# Marker and line style of compute.png's panels, in panel order (panel i: style i).
PANEL_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("v", "-."), ("D", ":"))
DPI = 110


def _plt():
  """pyplot, on the Agg backend unless a backend was chosen (pyplot in use, MPLBACKEND set:
  e.g. a notebook's inline backend)."""
  if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    import matplotlib
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path) -> None:
  """Write `fig` to `path` as a PNG trimmed to what is drawn, and close it."""
  fig.savefig(str(path), dpi=DPI, bbox_inches="tight")
  _plt().close(fig)


def family_colors(families: Sequence[str],
                  preset: dict[str, str] | None = None) -> dict[str, str]:
  """A colour per family (a run's label: a strategy, a variant, constant LR), for every
  figure of a comparison: a family in `preset` keeps its colour, the others take PALETTE's
  colours in order, skipping those taken (cycling when there are more families)."""
  preset = preset or {}
  out = {f: preset[f] for f in families if f in preset}
  free = [c for c in PALETTE if c not in out.values()] or list(PALETTE)
  for i, f in enumerate(f for f in dict.fromkeys(families) if f not in preset):
    out[f] = free[i % len(free)]
  return {f: out[f] for f in families}


_OUTSIDE = {"right": "outside right upper", "left": "outside left upper",
            "top": "outside upper center", "bottom": "outside lower center"}


def legend_outside(target, handles=None, labels=None, where: str = "right", **kwargs):
  """A legend beside the data, never over it; returns the Legend.

  target: an Axes: the legend hangs to the right of its axes box, top-aligned (`where`
  must be "right"; for a legend on another side of one Axes pass its Figure). A Figure:
  the legend sits outside all its axes on the `where` side (right, left, top, bottom); top
  and bottom legends lay their entries out in rows of up to 5. Either way the figure needs
  constrained layout, which makes the room (turned on when it has no layout engine;
  ValueError under another engine). handles/labels: as for `legend`; by default the
  labelled artists of the axes (of every axes of a Figure), one per label. kwargs go to
  `legend` (title, fontsize, ncols, ...).
  """
  from matplotlib.figure import FigureBase
  from matplotlib.layout_engine import ConstrainedLayoutEngine
  is_fig = isinstance(target, FigureBase)
  fig = target if is_fig else target.get_figure()
  if fig.get_layout_engine() is None:
    fig.set_layout_engine("constrained")
  if not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):
    raise ValueError("legend_outside: the figure needs constrained layout (or none), not "
                     f"{type(fig.get_layout_engine()).__name__}")
  if handles is None:
    pairs = {}
    for ax in (target.axes if is_fig else [target]):
      for h, l in zip(*ax.get_legend_handles_labels()):
        pairs.setdefault(l, h)
    handles, labels = list(pairs.values()), list(pairs)
  labels = [h.get_label() for h in handles] if labels is None else labels
  if not is_fig and where == "right":
    return target.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                         borderaxespad=0, **kwargs)
  if not is_fig or where not in _OUTSIDE:
    raise ValueError(f"legend_outside: where must be one of {', '.join(_OUTSIDE)} for a "
                     f"Figure, right for an Axes; got {where!r}")
  if where in ("top", "bottom"):
    kwargs.setdefault("ncols", max(1, min(5, len(handles))))
  return target.legend(handles, labels, loc=_OUTSIDE[where], **kwargs)


def fit_title(ax, text: str, color="k", fontsize: float = 10) -> None:
  """`text` as the left-aligned title of `ax`, wrapped to the axes' width (estimated from
  the figure size at ~0.6 em a character, with a margin), so a long name never runs off
  the figure."""
  width_in = ax.get_figure().get_figwidth() * ax.get_position().width
  chars = max(12, int(0.85 * width_in * 72 / (0.6 * fontsize)))
  ax.set_title(textwrap.fill(text, chars), loc="left", color=color, fontsize=fontsize)


def read_metrics(workdir) -> dict[str, dict[str, list]]:
  """metrics.jsonl of a run as {branch: {"train": [(step, loss)], "eval": [(step, loss)]}},
  sorted by step; a step logged twice (a resumed run) keeps its last row."""
  path = epath.Path(workdir) / "metrics.jsonl"
  out: dict[str, dict[str, dict[int, float]]] = {}
  if not path.exists():
    return {}
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue  # a line cut short by a kill
    series = out.setdefault(row.get("branch", "main"), {"train": {}, "eval": {}})
    if "train_loss" in row:
      series["train"][int(row["step"])] = row["train_loss"]
    if "eval_loss" in row:
      series["eval"][int(row["step"])] = row["eval_loss"]
  return {b: {k: sorted(v.items()) for k, v in s.items()} for b, s in out.items()}


def read_manifest(workdir) -> list[dict]:
  path = epath.Path(workdir) / "checkpoints" / "manifest.json"
  return json.loads(path.read_text()) if path.exists() else []


def loss_ylim(values: Sequence[float]) -> tuple[float, float] | None:
  """Y range that shows the late curve: the first tenth of the values (the steep fall
  from init) does not set the top."""
  if not values:
    return None
  v = np.asarray(values, float)
  v = v[np.isfinite(v)]
  late = v[len(v) // 10:] if len(v) > 10 else v
  lo, hi = float(v.min()), float(np.percentile(late, 98))
  pad = 0.05 * max(hi - lo, 1e-3)
  return lo - pad, hi + pad


def draw_run_losses(ax, workdir, color: str = "C0", label: str | None = None) -> list[float]:
  """Train loss (lines) and eval loss (dots) of every branch of one run on `ax`, fork
  points as dotted verticals, decayed checkpoints as stars. Returns the losses drawn."""
  metrics = read_metrics(workdir)
  drawn = []
  for branch, series in sorted(metrics.items(), key=lambda kv: kv[0] != "main"):
    main = branch == plan_lib.MAIN
    if series["train"]:
      s, l = zip(*series["train"])
      name = f"{label} train" if label else "train"
      ax.plot(s, l, ".-", color=color if main else DECAY_COLOR, lw=0.9 if main else 1.2,
              ms=2 if main else 3, alpha=0.6 if main else 0.9, label=name if main else None)
      drawn += l
    if series["eval"]:
      s, l = zip(*series["eval"])
      ax.plot(s, l, "o", color=color if main else DECAY_COLOR, ms=3,
              label=(f"{label} eval" if label else "eval") if main else None)
      drawn += l
  for e in read_manifest(workdir):
    if e.get("fork_point") and e["branch"] == plan_lib.MAIN:
      ax.axvline(e["step"], color="k", ls=":", lw=0.8, alpha=0.6)
    if e.get("decayed") and e.get("eval_loss") is not None:
      ax.plot(e["step"], e["eval_loss"], "*", color="k", ms=10, zorder=5)
      drawn.append(e["eval_loss"])
  return drawn


def _handle(label: str, color="0.4", **style):
  """A legend entry: a line/marker that stands for what the figure draws."""
  from matplotlib.lines import Line2D
  return Line2D([], [], color=color, label=label, **style)


def losses_figure(groups: Sequence[tuple[str, str, Sequence]]):
  """One panel per (title, colour, workdirs), stacked on a shared step axis: every run's
  train and eval loss (draw_run_losses), the main branch in the panel's colour; each panel
  titled with its name only (wrapped to fit), what the marks mean said once, in a legend
  above the panels. Returns the Figure."""
  plt = _plt()
  fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.2 * len(groups) + 1.0),
                           sharex=True, squeeze=False, layout="constrained")
  for ax, (title, color, workdirs) in zip(axes[:, 0], groups):
    values = []
    for w in workdirs:
      values += draw_run_losses(ax, w, color)
    lim = loss_ylim(values)
    if lim:
      ax.set_ylim(*lim)
    fit_title(ax, title, color)
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel("step")
  fig.supylabel("loss (nats/token)")
  handles = [
      _handle("main branch: train loss (in the run's colour)", marker=".", ms=4, lw=0.9),
      _handle("main branch: eval loss", marker="o", ms=3, ls="none"),
      _handle("decay branches: train (line), eval (dots)", DECAY_COLOR, marker=".", lw=1.2),
      _handle("fork point", "k", ls=":", lw=0.8),
      _handle("decayed checkpoint: eval loss", "k", marker="*", ms=10, ls="none")]
  legend_outside(fig, handles, where="top", fontsize=8, ncols=3)
  return fig


def plot_losses(groups: Sequence[tuple[str, str, Sequence]], path) -> None:
  """losses_figure(groups) written to `path`."""
  _save(losses_figure(groups), path)


def _compute_series(rows: Sequence[dict]) -> dict[tuple, list[tuple[float, float]]]:
  """{(kind, family): [(run FLOPs, eval loss)], by FLOPs} of the rows with an eval loss; a
  row's family defaults to its series, then its strategy; its kind to None."""
  out: dict[tuple, list] = {}
  for r in rows:
    if r.get("eval_loss") is None:
      continue
    family = r.get("family") or r.get("series") or r["strategy"]
    out.setdefault((r.get("kind"), family), []).append((r["run_flops"], r["eval_loss"]))
  return {k: sorted(v) for k, v in out.items()}


def _budget_spans(rows: Sequence[dict]) -> dict[int, tuple[float, float]]:
  """Budget -> (least, most) run FLOPs of its rows with an eval loss."""
  out: dict[int, list] = {}
  for r in rows:
    if r.get("eval_loss") is not None:
      out.setdefault(r["budget"], []).append(r["run_flops"])
  return {b: (min(v), max(v)) for b, v in sorted(out.items())}


def _label_budgets(ax, spans: dict[int, tuple[float, float]]) -> None:
  """Each budget named once, as a tick on top of `ax` at the middle of the FLOPs its rows
  span (rows of one budget cost the same under equal compute; merges cost more, a
  constant-LR run less)."""
  top = ax.secondary_xaxis("top")
  top.set_xticks([(lo + hi) / 2 for lo, hi in spans.values()],
                 labels=[f"B={b}" for b in spans])
  top.tick_params(labelsize=8, length=3)


def _compute_handles(colors: dict, entropy_rate, reference: str | None) -> list:
  """compute.png's legend: a colour per family, then the faint reference, the optimum."""
  out = [_handle(f, color, marker="o", ms=5) for f, color in colors.items()]
  if reference:
    out.append(_handle(f"faint: {reference}", lw=2.5, alpha=0.3))
  if entropy_rate is not None:
    out.append(_handle(f"entropy rate {entropy_rate:.3f} (optimum)", "k", ls="--", lw=1))
  return out


def _draw_compute_panel(ax, series: dict, kind, reference, colors: dict, style) -> None:
  """The lines of `kind` (series: {(kind, family): points}), one per family of `colors`
  in its colour with `style` (marker, line); faintly beneath, those of `reference`."""
  marker, ls = style
  for f, color in colors.items():
    if reference not in (None, kind) and (reference, f) in series:
      ax.plot(*zip(*series[(reference, f)]), "-", color=color, lw=2.5, alpha=0.2)
    if (kind, f) in series:
      ax.plot(*zip(*series[(kind, f)]), marker=marker, ls=ls, color=color, ms=5)


def compute_figure(rows: Sequence[dict], colors: dict[str, str] | None = None,
                   entropy_rate: float | None = None, kinds: dict | None = None):
  """Eval loss of each checkpoint against the FLOPs its whole run had spent for it: one
  panel per kind of checkpoint (decayed, merge, each EMA shadow), one line per family in
  its colour, sharing both axes. Returns the Figure.

  Why a panel per kind rather than one panel with a marker per kind: a comparison of
  endings has ~20 series (5 runs x decay, merge, 2 EMA shadows) that differ by hundredths
  of a nat over a whole-nat range, so in one panel they pile up whatever their styles. A
  panel per kind holds one line per family (a handful); colours are per family (the same
  as losses.png's and schedules.png's, from `colors`); and the first panel's lines repeat
  faintly in the others, so a merge or shadow reads against the decay it stands in for.

  rows: dicts with run_flops, eval_loss (None: left out), budget, and optionally family
  (default: series, then strategy) and kind (default None). colors: family -> colour,
  also the legend's order. kinds: kind -> panel title, in panel order (default: order of
  appearance, titled by the kind); kinds without a row with a loss get no panel. Each
  budget is named once, on top (_label_budgets); `entropy_rate`: a dashed line.
  """
  plt = _plt()
  series = _compute_series(rows)
  present = dict.fromkeys(k for k, _ in series)
  kinds = {k: t for k, t in (kinds or {}).items() if k in present}
  kinds.update({k: k or "" for k in present if k not in kinds})
  named = dict.fromkeys(f for _, f in series)  # the families, `colors`' first
  colors = family_colors([f for f in colors or {} if f in named]
                         + [f for f in named if f not in (colors or {})], colors)
  panels = max(1, len(kinds))
  fig, axes = plt.subplots(panels, 1, figsize=(9, 2.5 * panels + 1.4), sharex=True,
                           sharey=True, squeeze=False, layout="constrained")
  first = next(iter(kinds), None)
  for i, (ax, (kind, title)) in enumerate(zip(axes[:, 0], kinds.items())):
    _draw_compute_panel(ax, series, kind, first, colors, PANEL_STYLES[i % len(PANEL_STYLES)])
    if entropy_rate is not None:
      ax.axhline(entropy_rate, color="k", ls="--", lw=1)
    fit_title(ax, title)
  for ax in axes[:, 0]:
    ax.grid(alpha=0.3)
  _label_budgets(axes[0, 0], _budget_spans(rows))
  axes[-1, 0].set_xlabel("FLOPs the whole run had spent for the checkpoint")
  fig.supylabel("eval loss")
  fig.suptitle("Eval loss against the compute spent, per budget B", fontsize=11)
  legend_outside(fig, _compute_handles(colors, entropy_rate,
                                       "the top panel's lines" if len(kinds) > 1 else None),
                 where="right", fontsize=8, title="colour: run")
  return fig


def plot_compute(rows: Sequence[dict], path, colors: dict[str, str] | None = None,
                 entropy_rate: float | None = None, kinds: dict | None = None) -> None:
  """compute_figure(rows, colors, entropy_rate, kinds) written to `path`."""
  _save(compute_figure(rows, colors, entropy_rate, kinds), path)


def draw_plan_lr(ax, plan: plan_lib.Plan, color: str = "C0") -> None:
  """The LR of each segment of `plan`, update t drawn over [t, t+1): main solid, decay
  branches forked off main dashed (WSD), decayed checkpoints (at their end step) as dots."""
  for seg in plan.segments:
    t = np.arange(seg.start, seg.end)
    lr = np.asarray(seg.schedule.build()(t.astype(np.int32)))
    forked = seg.decayed and seg.parent == plan_lib.MAIN and plan.strategy == "wsd"
    ax.plot(np.append(t, seg.end), np.append(lr, lr[-1]), drawstyle="steps-post",
            color=DECAY_COLOR if forked else color, ls="--" if forked else "-", lw=1.3)
    if seg.decayed:
      ax.plot(seg.end, lr[-1], "o", color="k", ms=4, zorder=5)


def schedules_figure(groups: Sequence[tuple[str, str, Sequence[plan_lib.Plan]]]):
  """One panel per (title, colour, plans), stacked on a shared step axis, each plan's LR
  (draw_plan_lr) in the panel's colour, titled with its name (wrapped to fit); what the
  marks mean said once, in a legend above the panels. Returns the Figure."""
  plt = _plt()
  fig, axes = plt.subplots(len(groups), 1, figsize=(10, 1.7 * len(groups) + 1.0),
                           sharex=True, squeeze=False, layout="constrained")
  for ax, (title, color, plans) in zip(axes[:, 0], groups):
    for p in plans:
      draw_plan_lr(ax, p, color)
    fit_title(ax, title, color)
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel("step (update t spans [t, t+1))")
  fig.supylabel("learning rate")
  handles = [_handle("the run's LR (in its colour)"),
             _handle("WSD decay branch, forked off main", DECAY_COLOR, ls="--"),
             _handle("decayed checkpoint", "k", marker="o", ms=4, ls="none")]
  legend_outside(fig, handles, where="top", fontsize=8)
  return fig


def plot_schedules(groups: Sequence[tuple[str, str, Sequence[plan_lib.Plan]]], path) -> None:
  """schedules_figure(groups) written to `path`."""
  _save(schedules_figure(groups), path)


def plot_river_valley(rows: Sequence[dict], entropy_rate: float, path,
                      main_eval: Sequence[tuple[int, float]] = ()) -> None:
  """The river-valley picture of a run with decay branches forked at several points.

  rows: one per decay branch with fork_step, step, start_eval_loss (main at the fork),
  eval_loss (decayed) and gap. Top: main-branch eval loss over steps, and per fork its
  loss (circle) and the decayed loss (star, at the branch's end step), joined. Middle: the
  gap (hill component) per fork. Bottom: distance of both to the entropy rate, log scale.
  """
  plt = _plt()
  rows = sorted((r for r in rows if r.get("start_eval_loss") is not None),
                key=lambda r: r["fork_step"])
  fig, (top, mid, low) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
  if main_eval:
    s, l = zip(*main_eval)
    top.plot(s, l, "-", color="C0", lw=1, alpha=0.7, label="main branch eval loss")
  fork = [r["fork_step"] for r in rows]
  end = [r["step"] for r in rows]
  main = np.array([r["start_eval_loss"] for r in rows])
  dec = np.array([r["eval_loss"] for r in rows])
  top.plot(fork, main, "o", color="C0", label="main at fork")
  top.plot(end, dec, "*", color="C1", ms=10, label="decayed")
  for f, e, a, b in zip(fork, end, main, dec):
    top.annotate("", (e, b), (f, a), arrowprops=dict(arrowstyle="->", color="C1", lw=1))
  top.axhline(entropy_rate, color="k", ls="--", lw=1, label=f"entropy rate {entropy_rate:.3f}")
  top.set_ylabel("eval loss")
  top.legend(fontsize=8)
  top.set_title("River valley: decaying removes the hill component and shows the progress "
                "along the river", fontsize=10)
  mid.bar(fork, main - dec, width=max(1, 0.4 * min(np.diff(fork), default=10)), color="C1",
          alpha=0.7)
  mid.set_ylabel("gap = main - decayed\n(hill component)")
  low.semilogy(fork, main - entropy_rate, "o-", color="C0", label="main - optimum")
  low.semilogy(fork, dec - entropy_rate, "*-", color="C1", ms=9,
               label="decayed - optimum (river)")
  low.set_ylabel("distance to optimum")
  low.set_xlabel("fork step (top panel: each star at its branch's end step)")
  low.legend(fontsize=8)
  for ax in (top, mid, low):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(str(path), dpi=110)
  plt.close(fig)


# ---- LR schedules (python -m wsdjax.lr --plot) ----
def plot_schedule(cfg, path: str, steps: int | None = None) -> None:
  """Draw the LR of `cfg` over [0, steps) to `path`: phases shaded and labelled, decayed
  checkpoints as dotted lines; for 'wsd', earlier budgets' decay branches dashed."""
  plt = _plt()
  spec = ScheduleSpec.from_config(cfg)
  steps = steps or spec.horizon()
  schedule, checkpoints, name = spec.build(), spec.checkpoint_steps(), spec.name
  fig, ax = plt.subplots(figsize=(10, 4))
  t, lr = schedule_curve(schedule, 0, steps)
  ax.plot(t, lr, color="C0", lw=1.5)
  if name == "wsd":
    _draw_wsd_branches(ax, spec, checkpoints[:-1])
  shade_phases(ax, schedule.phases, steps)
  for c in checkpoints:
    ax.axvline(c, color="k", ls=":", lw=1)
  ax.set(xlim=(0, steps), ylim=(0, 1.3 * max(lr.max(), 1e-30)), xlabel="step",
         ylabel="learning rate", title=f"{name}: decayed checkpoints at "
         f"steps {', '.join(map(str, checkpoints)) or '(none)'}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def shade_phases(ax, phase_list: Sequence, steps: int) -> None:
  """A tinted band per phase with its name at the top (vertical when narrow)."""
  colors = {"warmup": "C2", "rewarmup": "C2", "stable": "C0", "decay": "C1", "cosine": "C1"}
  for p in phase_list:
    if p.start >= steps:
      continue
    end = steps if p.end is None else min(p.end, steps)
    ax.axvspan(p.start, end, color=colors.get(p.name.split()[0], "C7"), alpha=0.12, lw=0)
    narrow = end - p.start < steps / 12
    ax.text((p.start + end) / 2, 0.98, p.name, transform=ax.get_xaxis_transform(),
            ha="center", va="top", fontsize=7, rotation=90 if narrow else 0)


def _draw_wsd_branches(ax, spec: ScheduleSpec, budgets: Sequence[int]) -> None:
  """WSD's decay branch for each of `budgets`, dashed, from its fork to the budget."""
  for budget in budgets:
    branch = spec.replace(total_steps=budget).build()
    fork = branch.phases[-2].start  # phases: ..., decay, floor
    ax.plot(*schedule_curve(branch, fork, budget + 1), color="C1", lw=1.2, ls="--")


def schedule_curve(schedule, start: int, stop: int, points: int = 20_000):
  """(steps, lr) over [start, stop): every step if few, else a sample plus phase edges."""
  if stop - start <= points:
    t = np.arange(start, stop)
  else:
    edges = [e for p in schedule.phases for e in (p.start - 1, p.start)]
    t = np.unique(np.concatenate([np.linspace(start, stop - 1, points).astype(np.int64),
                                  [e for e in edges if start <= e < stop]]))
  return t, np.asarray(schedule(t.astype(np.int32)))


def plot_law(result: dict, path) -> None:
  """A loss law's figure (`law_report.analyse`): left, the logged train-loss windows of
  every branch (dots) and the fitted law (lines); right, eval losses: main's (circles)
  and the law on their scale, each decayed checkpoint measured (star) and predicted with
  it left out (cross), and the curves of the predicted schedules (dashed). One colour per
  branch, legends beside the panels."""
  plt = _plt()
  curves, fit = result["_curves"]["run"], result["_curves"]["fit"]
  fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.8), constrained_layout=True)
  colors = _branch_colors(curves.lineages)
  drawn = []
  for branch, line in curves.lineages.items():
    rows = [(a, b, v) for name, a, b, v in curves.train if name == branch]
    if rows:
      left.plot([(a + b) / 2 for a, b, _ in rows], [v for *_, v in rows], ".",
                color=colors[branch], ms=3, alpha=0.5)
      drawn += [v for *_, v in rows]
    states = np.arange(max(1, line.start), line.end + 1)
    left.plot(states, fit.loss(line.lr, states, eval_scale=False), "-", color=colors[branch],
              lw=1.2, label=branch)
  _draw_law_evals(right, result, curves, fit, colors)
  lim = loss_ylim(drawn)
  if lim:
    left.set_ylim(*lim)
  left.set(xlabel="step", ylabel="train loss", title=f"{result['law']} law: fit to the "
           "train-loss windows")
  right.set(xlabel="step", ylabel="eval loss", title="eval losses: measured, fitted, "
            "predicted (decay left out)")
  for ax in (left, right):
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=8, frameon=False)
  fig.savefig(str(path), dpi=110, bbox_inches="tight")
  plt.close(fig)


def _branch_colors(lineages) -> dict[str, str]:
  decays = [b for b in lineages if b != plan_lib.MAIN]
  return {plan_lib.MAIN: "0.35"} | {b: f"C{i % 10}" for i, b in enumerate(decays)}


def _draw_law_evals(ax, result: dict, curves, fit, colors) -> None:
  """The right panel of `plot_law`."""
  main = curves.lineages.get(plan_lib.MAIN)
  values = []
  if main is not None:
    states = np.arange(1, main.end + 1)
    ax.plot(states, fit.loss(main.lr, states), "-", color=colors[plan_lib.MAIN], lw=1,
            label="law (main)")
    evals = [(s, v) for b, s, v in curves.evals if b == plan_lib.MAIN]
    if evals:
      ax.plot(*zip(*evals), "o", color=colors[plan_lib.MAIN], mfc="none", ms=5,
              label="main, measured")
      values += [v for _, v in evals]
  for r in result["leave_one_out"]:
    c = colors.get(r["branch"], "k")
    ax.plot(r["step"], r["measured"], "*", color=c, ms=11, label=f"{r['branch']} measured")
    if r["predicted"] is not None:
      ax.plot(r["step"], r["predicted"], "x", color=c, ms=9, mew=2,
              label=f"  predicted ({100 * r['relative']:+.1f}%)")
      values += [r["predicted"]]
    values += [r["measured"]]
  for i, p in enumerate(result["_curves"]["predictions"]):
    steps, loss = p["curve"]
    ax.plot(steps, loss, "--", color=f"C{(i + 5) % 10}", lw=1.2,
            label=f"{p['scenario'][:28]}: {p['branch']}")
    values += [loss[-1]]
  lim = loss_ylim(values)
  if lim:
    ax.set_ylim(*lim)

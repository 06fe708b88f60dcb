"""Plots of finished runs (matplotlib, Agg backend): losses of each branch against step,
eval loss against compute, LR schedules of a plan, and the river-valley picture.

Everything here reads what a run left in its workdir (metrics.jsonl, the manifest) or a
plan; nothing trains. Each function writes one PNG and returns nothing.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np
from etils import epath

from wsdjax.schedule import plan as plan_lib
from wsdjax.schedule.spec import ScheduleSpec

COLORS = {"wsd": "C0", "wsd_s": "C3", "cyclic_cosine": "C2", "cosine": "C7"}


def _plt():
  """pyplot, on the Agg backend unless a backend was chosen (pyplot in use, MPLBACKEND set:
  e.g. a notebook's inline backend)."""
  if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    import matplotlib
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


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
      ax.plot(s, l, ".-", color=color if main else "C1", lw=0.9 if main else 1.2,
              ms=2 if main else 3, alpha=0.6 if main else 0.9, label=name if main else None)
      drawn += l
    if series["eval"]:
      s, l = zip(*series["eval"])
      ax.plot(s, l, "o", color=color if main else "C1", ms=3,
              label=(f"{label} eval" if label else "eval") if main else None)
      drawn += l
  for e in read_manifest(workdir):
    if e.get("fork_point") and e["branch"] == plan_lib.MAIN:
      ax.axvline(e["step"], color="k", ls=":", lw=0.8, alpha=0.6)
    if e.get("decayed") and e.get("eval_loss") is not None:
      ax.plot(e["step"], e["eval_loss"], "*", color="k", ms=10, zorder=5)
      drawn.append(e["eval_loss"])
  return drawn


def plot_losses(groups: Sequence[tuple[str, str, Sequence]], path) -> None:
  """One panel per (title, color key, workdirs): train/eval loss against step."""
  plt = _plt()
  fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.8 * len(groups)), sharex=True,
                           squeeze=False)
  for ax, (title, key, workdirs) in zip(axes[:, 0], groups):
    values = []
    for w in workdirs:
      values += draw_run_losses(ax, w, COLORS.get(key, "C0"))
    lim = loss_ylim(values)
    if lim:
      ax.set_ylim(*lim)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{title}: train loss (line) and eval loss (dots) of the main branch, decay "
                 f"branches in orange; fork points dotted, decayed checkpoints starred",
                 fontsize=9, loc="left")
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel("step")
  fig.tight_layout()
  fig.savefig(str(path), dpi=110)
  plt.close(fig)


def plot_compute(rows: Sequence[dict], path, labels: dict[str, str],
                 entropy_rate: float | None = None) -> None:
  """Eval loss of each decayed checkpoint (and merge, EMA shadow) against the FLOPs the
  whole run had spent for it, one line per series (`labels`: row series -> legend; rows
  without a series by strategy); each point labelled with its budget."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for i, key in enumerate(labels):
    pts = sorted((r["run_flops"], r["eval_loss"], r["budget"]) for r in rows
                 if r.get("series", r["strategy"]) == key and r["eval_loss"] is not None)
    if not pts:
      continue
    x, y, b = zip(*pts)
    color = COLORS.get(key, f"C{i % 10}")
    style = "o-" if " merge " not in key and " EMA " not in key else "s:"
    ax.plot(x, y, style, color=color, label=labels[key])
    for xi, yi, bi in pts:
      ax.annotate(f"B={bi}", (xi, yi), textcoords="offset points", xytext=(4, 4),
                  fontsize=7, color=color)
  if entropy_rate is not None:
    ax.axhline(entropy_rate, color="k", ls="--", lw=1, label="entropy rate (optimum)")
  ax.set(xlabel="FLOPs spent by the whole run up to the checkpoint",
         ylabel="eval loss of the decayed checkpoint",
         title="Eval loss against total compute, per budget")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(str(path), dpi=110)
  plt.close(fig)


def draw_plan_lr(ax, plan: plan_lib.Plan, color: str = "C0") -> None:
  """The LR of each segment of `plan`, update t drawn over [t, t+1): main solid, decay
  branches forked off main dashed (WSD), decayed checkpoints (at their end step) as dots."""
  for seg in plan.segments:
    t = np.arange(seg.start, seg.end)
    lr = np.asarray(seg.schedule.build()(t.astype(np.int32)))
    forked = seg.decayed and seg.parent == plan_lib.MAIN and plan.strategy == "wsd"
    ax.plot(np.append(t, seg.end), np.append(lr, lr[-1]), drawstyle="steps-post",
            color="C1" if forked else color, ls="--" if forked else "-", lw=1.3)
    if seg.decayed:
      ax.plot(seg.end, lr[-1], "o", color="k", ms=4, zorder=5)


def plot_schedules(groups: Sequence[tuple[str, str, Sequence[plan_lib.Plan]]], path) -> None:
  """One panel per (title, color key, plans), stacked with a shared step axis."""
  plt = _plt()
  fig, axes = plt.subplots(len(groups), 1, figsize=(10, 1.9 * len(groups) + 0.6),
                           sharex=True, squeeze=False)
  for ax, (title, key, plans) in zip(axes[:, 0], groups):
    for p in plans:
      draw_plan_lr(ax, p, COLORS.get(key, "C0"))
    ax.set_ylabel("LR")
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel("step (update t spans [t, t+1); dots: decayed checkpoints)")
  fig.tight_layout()
  fig.savefig(str(path), dpi=110)
  plt.close(fig)


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
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
  fig.savefig(str(path), dpi=110)
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
    values += [r["measured"]]
  for i, p in enumerate(result["_curves"]["predictions"]):
    steps, loss = p["curve"]
    ax.plot(steps, loss, "--", color=f"C{(i + 5) % 10}", lw=1.2,
            label=f"{p['scenario'][:28]}: {p['branch']}")
    values += [loss[-1]]
  lim = loss_ylim(values)
  if lim:
    ax.set_ylim(*lim)

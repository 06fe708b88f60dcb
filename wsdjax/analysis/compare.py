"""Schedules compared at equal compute (behind `python -m wsdjax.compare`).

Runs several strategies on the same model, data, seed and validation set, one run each in
W/<strategy> (cosine: one run per budget, W/cosine-<B_i>), each by
`trainer.train_and_evaluate`, so a rerun resumes unfinished runs and reuses finished ones.
Then writes W/results.csv, W/results.md and three plots (losses.png, compute.png,
schedules.png). `--only` runs just the named strategies; the results cover every strategy
of the config whose run is in W.

Equal-compute accounting (Wen et al. 2024): with budgets B_1 < ... < B_k and decays d_i,
WSD's checkpoint i (step B_i) and WSD-S's (step C_i = B_i + sum_{j<i} d_j) are both ready
after the whole run has spent C_i steps. With `compare.equal_compute`, cyclic cosine's
cycles (and each cosine run) end at C_i too, so every row of budget i costs the same run
FLOPs; the table shows those FLOPs (the manifest's `run_flops`) next to the eval loss of
the decayed checkpoint. The paper's claim per budget: WSD-S <= WSD <= cyclic cosine.

A compare config is a run config (`wsdjax.config.base_config` fields) plus a `compare`
section: strategies (tuple), cosine (bool), equal_compute (bool).
"""

from __future__ import annotations


import csv
import dataclasses
import io
import re
import sys
from typing import Sequence

import ml_collections
from etils import epath

from wsdjax import config as config_lib
from wsdjax.schedule import plan as plan_lib
from wsdjax.analysis import plots
from wsdjax.schedule import builders as schedules

STRATEGIES = ("wsd", "wsd_s", "cyclic_cosine", "cosine", "constant")
RUNNABLE = ("wsd", "wsd_s", "cyclic_cosine", "constant")  # compare.strategies / variants
PAPER_ORDER = ("wsd_s", "wsd", "cyclic_cosine")  # claimed: at or below, left to right
LABELS = {"wsd": "WSD", "wsd_s": "WSD-S", "cyclic_cosine": "cyclic cosine",
          "cosine": "cosine", "constant": "constant LR"}
CSV_FIELDS = ("strategy", "series", "budget", "run", "checkpoint", "step", "tokens", "run_flops",
              "run_steps", "eval_loss", "gap", "gap_to_optimum")


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the comparison: `strategy` in W/`dirname` with `config`.

  `budget`: for a per-budget run (cosine) the budget B_i it stands for; else None.
  """
  strategy: str
  config: ml_collections.ConfigDict
  budget: int | None = None
  variant: str | None = None  # a `compare.variants` name: the strategy with overrides

  @property
  def dirname(self) -> str:
    if self.variant is not None:
      return "variant-" + re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.variant)
    return self.strategy if self.budget is None else f"{self.strategy}-{self.budget}"

  @property
  def label(self) -> str:
    return self.variant if self.variant is not None else LABELS[self.strategy]


# ---- configs ----
def check(cfg) -> None:
  """Validate the `compare` section and every run config; ConfigError (one line) if bad."""
  if "compare" not in cfg:
    raise config_lib.ConfigError(
        "compare", "the config has no compare section",
        "use a compare config such as configs/compare_small.py")
  c = cfg.compare
  extra = sorted(set(c.keys()) - {"strategies", "cosine", "equal_compute", "variants"})
  if extra:
    raise config_lib.ConfigError(f"compare.{extra[0]}", "unknown config key",
                                 "use strategies, cosine, equal_compute, variants")
  names = tuple(c.get("strategies", ()))
  if not names or any(s not in RUNNABLE for s in names) or len(set(names)) < len(names):
    raise config_lib.ConfigError(
        "compare.strategies", f"must be distinct names among {', '.join(RUNNABLE)}, "
        f"got {names!r}", "e.g. --config.compare.strategies='(\"wsd\",\"wsd_s\")'")
  _check_variants(c.get("variants", ()))
  for run in runs(cfg):
    try:
      config_lib.validate(run.config)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(e.field, f"{e.problem} (in the {run.dirname} run)",
                                   e.fix) from None


def _check_variants(variants) -> None:
  """Each variant is (name, strategy, ((field, value), ...)) with a distinct name."""
  fix = ("e.g. (('WSD 1-sqrt', 'wsd', (('schedule.decay_shape', '1-sqrt'),)),); fields "
         "are run config fields (not schedule.name)")
  seen = set()
  for v in variants:
    ok = (isinstance(v, (tuple, list)) and len(v) == 3 and isinstance(v[0], str) and v[0]
          and v[0] not in seen and v[1] in RUNNABLE and isinstance(v[2], (tuple, list))
          and all(isinstance(o, (tuple, list)) and len(o) == 2 and isinstance(o[0], str)
                  and o[0] != "schedule.name" for o in v[2]))
    if not ok:
      raise config_lib.ConfigError("compare.variants", f"bad variant {v!r} (a name, one of "
                                   f"{', '.join(RUNNABLE)}, and overrides)", fix)
    seen.add(v[0])


def _with_overrides(cfg, overrides, variant: str):
  """`cfg` with `overrides` ((dotted field, value) pairs) set; ConfigError on a bad field."""
  known = config_lib.flatten(config_lib.base_config())
  for field, value in overrides:
    if field not in known:
      raise config_lib.ConfigError("compare.variants", f"variant {variant!r} sets unknown "
                                   f"field {field!r}", "use run config fields, e.g. "
                                   "schedule.decay_shape or schedule.decay_overrides.b2")
    config_lib.set_field(cfg, field, tuple(value) if isinstance(value, list) else value)
  return cfg


def enabled(cfg) -> tuple[str, ...]:
  """Strategy names this config compares, in STRATEGIES order."""
  names = set(cfg.compare.strategies) | ({"cosine"} if cfg.compare.cosine else set())
  return tuple(s for s in STRATEGIES if s in names)


def budgets(cfg) -> list[int]:
  return [int(b) for b in cfg.schedule.budgets]


def checkpoint_steps(cfg) -> list[int]:
  """C_i: the run steps WSD and WSD-S have spent when their i-th checkpoint is ready."""
  return schedules.wsd_s_checkpoints(budgets(cfg), cfg.schedule.decay_fraction)


def run_config(cfg, strategy: str, budget_index: int | None = None):
  """The run config of `strategy` (cosine: of budget `budget_index`): the shared fields,
  schedule.name set, cyclic/cosine budgets moved to C_i under equal_compute."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  del out["compare"]
  out.schedule.name = strategy
  ends = checkpoint_steps(cfg) if cfg.compare.equal_compute else budgets(cfg)
  if strategy == "cyclic_cosine":
    out.schedule.budgets = tuple(ends)
  elif strategy == "cosine":
    out.schedule.budgets = (ends[budget_index],)
  out.name = f"{cfg.name}-{strategy}" + ("" if budget_index is None else
                                         f"-{budgets(cfg)[budget_index]}")
  return out


def runs(cfg, only: Sequence[str] | None = None) -> list[Run]:
  """The runs of the comparison (only those of `only`'s strategies when given)."""
  out = []
  for s in enabled(cfg):
    if only and s not in only:
      continue
    if s == "cosine":
      out += [Run(s, run_config(cfg, s, i), b) for i, b in enumerate(budgets(cfg))]
    else:
      out.append(Run(s, run_config(cfg, s)))
  for name, strategy, overrides in cfg.compare.get("variants", ()):
    if not only or name in only:
      run_cfg = _with_overrides(run_config(cfg, strategy), overrides, name)
      run_cfg.name = f"{cfg.name}-{name}"
      out.append(Run(strategy, run_cfg, variant=name))
  return out


# ---- results ----
def entropy_rate(cfg) -> float | None:
  """The bigram chain's entropy rate (the optimal loss), or None for other data."""
  if cfg.data.source != "bigram":
    return None
  from wsdjax.data import bigram
  return bigram.BigramChain(cfg.model.vocab_size, cfg.data.bigram_alpha,
                            cfg.data.bigram_seed).entropy_rate


def collect(cfg, workdir) -> list[dict]:
  """One row per (run, budget) for each decayed checkpoint in `workdir`'s runs, and for
  the merges, the EMA shadows and (constant LR) the main states at the budgets. A row's
  `series` is its `family` (the run's label) and `kind` (_kind) in one name."""
  from wsdjax import checkpoint as ckpt
  from wsdjax.training import ema
  from wsdjax.model import transformer as model_lib
  workdir = epath.Path(workdir)
  h = entropy_rate(cfg)
  flops_per_step = (cfg.train.global_batch_size * cfg.model.seq_len
                    * model_lib.flops_per_token(cfg.model))
  rows = []
  for run in runs(cfg):
    if not (workdir / run.dirname / "checkpoints").exists():
      continue
    # The budget each of the run's own budgets stands for in the comparison (equal compute
    # moves cyclic cosine's and cosine's to the WSD-S checkpoint steps C_i).
    own = [int(b) for b in run.config.schedule.budgets]
    labels = dict(zip(own, budgets(cfg))) if len(own) == len(budgets(cfg)) else {}
    with ckpt.CheckpointTree(workdir / run.dirname, read_only=True) as tree:
      manifest = tree.manifest()
    for entry in manifest + ema.shadow_entries(manifest):
      kind = _kind(run, entry, own)
      if kind is None:
        continue
      served = entry.get("budget") or entry["step"]  # as recorded (a shadow: its source's)
      rows.append(_row(run, kind, run.budget or labels.get(served, served), entry,
                       flops_per_step, h))
  order = {s: i for i, s in enumerate(STRATEGIES)}
  return sorted(rows, key=lambda r: (r["budget"], order[r["strategy"]], r["series"]))


# The kind of a row that is the checkpoint of its budget: decayed, or (constant LR) main.
CHECKPOINT = "checkpoint"


def _kind(run: Run, entry: dict, budgets_of_run: list[int]) -> str | None:
  """The kind of row a manifest entry of `run` makes, or None when it is not a row:
  CHECKPOINT (a decayed checkpoint; main at a budget of a constant-LR run), "merge (...)",
  or "EMA <decay>" (shadows of decayed checkpoints and of main at a budget)."""
  at_budget = entry["step"] in budgets_of_run
  if entry.get("source"):  # an EMA shadow
    source_at_budget = entry["source"]["branch"] != plan_lib.MAIN or at_budget
    return f"EMA {entry['ema_decay']:g}" if source_at_budget else None
  if entry.get("decayed"):
    return CHECKPOINT
  if entry.get("merged"):
    return f"merge ({entry['merge_weights']}, {entry['window']} steps)"
  if entry["branch"] == plan_lib.MAIN and at_budget and run.strategy == "constant":
    return CHECKPOINT
  return None


def _series(family: str, kind: str) -> str:
  """The table series of a row: its family (the run's label), then its kind unless it is
  the checkpoint itself ("WSD", "WSD EMA 0.9", "constant LR merge (uniform, 16 steps)")."""
  return family if kind == CHECKPOINT else f"{family} {kind}"


def _row(run: Run, kind: str, budget: int, entry: dict, flops_per_step: float,
         h: float | None) -> dict:
  """A result row of `entry`, a `kind` of row (_kind) of `run`'s family (its label);
  `h`: the data's entropy rate (None: unknown)."""
  loss = entry.get("eval_loss")
  return dict(strategy=run.strategy, series=_series(run.label, kind), family=run.label,
              kind=kind, budget=budget, run=run.dirname,
              checkpoint=entry["branch"], step=entry["step"], tokens=entry["tokens"],
              run_flops=entry["run_flops"],
              run_steps=int(round(entry["run_flops"] / flops_per_step)), eval_loss=loss,
              gap=entry.get("gap"),
              gap_to_optimum=None if h is None or loss is None else loss - h)


def ordering(rows: list[dict]) -> list[dict]:
  """Per budget: the eval losses of PAPER_ORDER's strategies and whether the paper's
  ordering (WSD-S <= WSD <= cyclic cosine) holds, from their plain decays only (not merges,
  shadows or variants). Budgets missing one of them are skipped."""
  out = []
  rows = [r for r in rows if r.get("series", LABELS[r["strategy"]]) == LABELS[r["strategy"]]]
  for budget in sorted({r["budget"] for r in rows}):
    loss = {r["strategy"]: r["eval_loss"] for r in rows if r["budget"] == budget}
    if any(loss.get(s) is None for s in PAPER_ORDER):
      continue
    a, b, c = (loss[s] for s in PAPER_ORDER)
    out.append(dict(budget=budget, wsd_s=a, wsd=b, cyclic_cosine=c,
                    wsd_s_le_wsd=a <= b, wsd_le_cyclic=b <= c, holds=a <= b <= c))
  return out


def _fmt(value, spec: str = ".4f") -> str:
  return "" if value is None else format(value, spec)


def to_csv(rows: list[dict]) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS})
  return buf.getvalue()


# The console table's columns (all but `run steps`), their widths and short names.
_CONSOLE_WIDTHS = {"strategy": 30, "budget": 7, "checkpoint": 11, "step": 6, "tokens": 11,
                   "run FLOPs": 10, "eval loss": 10, "gap": 8, "to optimum": 8}
_CONSOLE_NAMES = {"to optimum": "to opt"}


def _columns(h: float | None) -> tuple[str, ...]:
  """The comparison table's columns; `to optimum` only where the optimal loss is known."""
  return ("strategy", "budget", "checkpoint", "step", "tokens", "run steps", "run FLOPs",
          "eval loss", "gap") + (("to optimum",) if h is not None else ())


def _cells(r: dict, h: float | None) -> dict[str, str]:
  """Column name -> the text of row `r`."""
  cells = {"strategy": r.get("series") or LABELS[r["strategy"]], "budget": str(r["budget"]),
           "checkpoint": str(r["checkpoint"]), "step": str(r["step"]),
           "tokens": f"{r['tokens']:,}", "run steps": str(r["run_steps"]),
           "run FLOPs": f"{r['run_flops']:.3g}", "eval loss": _fmt(r["eval_loss"]),
           "gap": _fmt(r["gap"])}
  if h is not None:
    cells["to optimum"] = _fmt(r["gap_to_optimum"])
  return cells


def to_markdown(cfg, rows: list[dict], plots: Sequence[str] = ()) -> str:
  """results.md: the table, the ordering verdict per budget, and the plots."""
  h = entropy_rate(cfg)
  lines = [f"# {cfg.name}: strategies at equal compute", "",
           f"Seed {cfg.seed}; budgets B = {tuple(budgets(cfg))} steps, decay fraction "
           f"{cfg.schedule.decay_fraction}; WSD/WSD-S checkpoint i is ready after "
           f"C = {tuple(checkpoint_steps(cfg))} run steps"
           + ("; cyclic cosine and cosine end budget i at C_i." if cfg.compare.equal_compute
              else "; cyclic cosine and cosine end budget i at B_i."), "",
           "`run FLOPs`: everything the run spent up to that checkpoint (main branch and "
           "every decay so far). `gap`: main-branch eval loss at the fork minus the decayed "
           "loss (the \"hill\" the decay removed)."
           + (f" Entropy rate of the chain (optimal loss): {h:.4f}." if h is not None else ""),
           ""]
  names = _columns(h)
  lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
  lines += ["| " + " | ".join(_cells(r, h).values()) + " |" for r in rows]
  verdicts = ordering(rows)
  if verdicts:
    lines += ["", "Paper's ordering per budget (WSD-S <= WSD <= cyclic cosine):", "",
              "| budget | WSD-S | WSD | cyclic cosine | WSD-S <= WSD | WSD <= cyclic | holds |",
              "|---|---|---|---|---|---|---|"]
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    for v in verdicts:
      lines.append(f"| {v['budget']} | {v['wsd_s']:.4f} | {v['wsd']:.4f} | "
                   f"{v['cyclic_cosine']:.4f} | {yes(v['wsd_s_le_wsd'])} | "
                   f"{yes(v['wsd_le_cyclic'])} | {yes(v['holds'])} |")
  for p in plots:
    lines += ["", f"![{p}]({p})"]
  return "\n".join(lines) + "\n"


def format_table(cfg, rows: list[dict]) -> str:
  """The console table of the comparison."""
  h = entropy_rate(cfg)
  names = [n for n in _columns(h) if n in _CONSOLE_WIDTHS]
  lines = [" ".join(f"{_CONSOLE_NAMES.get(n, n):>{_CONSOLE_WIDTHS[n]}}" for n in names)]
  for r in rows:
    cells = _cells(r, h)
    lines.append(" ".join(f"{cells[n]:>{_CONSOLE_WIDTHS[n]}}" for n in names))
  for v in ordering(rows):
    lines.append(f"budget {v['budget']}: WSD-S {v['wsd_s']:.4f}, WSD {v['wsd']:.4f}, "
                 f"cyclic cosine {v['cyclic_cosine']:.4f}: paper's ordering "
                 f"{'holds' if v['holds'] else 'does NOT hold'}")
  return "\n".join(lines)


def _kind_titles(rows: Sequence[dict]) -> dict[str, str]:
  """compute.png's panel title of each kind of row, in panel order: checkpoints, merges,
  EMA shadows by decay."""
  constant = any(r["strategy"] == "constant" for r in rows)
  out = {}
  for kind in sorted({r.get("kind", CHECKPOINT) for r in rows},
                     key=lambda k: (k != CHECKPOINT, not k.startswith("merge"), k)):
    if kind == CHECKPOINT:
      out[kind] = "Decayed checkpoints" + ("; constant LR: its main state at B (no decay)"
                                           if constant else "")
    elif kind.startswith("merge"):
      out[kind] = f"Merges of the main branch's saves before B {kind[len('merge '):]}"
    else:
      out[kind] = f"{kind} shadows of the checkpoints above"
  return out


def _plots(cfg, workdir, done: Sequence, rows: Sequence[dict]) -> list[str]:
  """losses.png, compute.png, schedules.png of a comparison in `workdir`; their names.
  A run's family (its label) has one colour in all three."""
  workdir = epath.Path(workdir)
  every = runs(cfg)
  colors = plots.family_colors(list(dict.fromkeys(r.label for r in every)),
                               {LABELS[s]: c for s, c in plots.COLORS.items()})
  groups: dict[str, list] = {}
  for run in done:
    groups.setdefault(run.label, []).append(run)

  def title(label):
    return label + (" (one run per budget)" if label == LABELS["cosine"] else "")
  plots.plot_losses([(title(label), colors[label], [workdir / r.dirname for r in rs])
                     for label, rs in groups.items()], workdir / "losses.png")
  plots.plot_compute(rows, workdir / "compute.png", colors, entropy_rate(cfg),
                     _kind_titles(rows))
  by: dict[str, list] = {}
  for r in every:
    by.setdefault(r.label, []).append(plan_lib.make_plan(r.config.schedule))
  plots.plot_schedules([(title(label), colors[label], plans) for label, plans in by.items()],
                       workdir / "schedules.png")
  return ["losses.png", "compute.png", "schedules.png"]


def report(cfg, workdir, stream=None) -> list[dict]:
  """Collect the rows of `workdir`; write results.csv, results.md and the plots there."""
  workdir = epath.Path(workdir)
  rows = collect(cfg, workdir)
  done = [r for r in runs(cfg) if (workdir / r.dirname / "checkpoints").exists()]
  names = _plots(cfg, workdir, done, rows)
  (workdir / "results.csv").write_text(to_csv(rows))
  (workdir / "results.md").write_text(to_markdown(cfg, rows, names))
  print(format_table(cfg, rows), file=stream or sys.stdout, flush=True)
  print(f"wrote {workdir / 'results.md'}, results.csv, {', '.join(names)}",
        file=stream or sys.stdout, flush=True)
  return rows


def compare(cfg, workdir, only: Sequence[str] | None = None, mesh=None,
            stream=None) -> list[dict]:
  """The library entry point behind the CLI: run (or resume, or reuse) each run, then
  `report`. Returns the result rows."""
  from wsdjax.training import trainer
  check(cfg)
  out = stream or sys.stdout
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  todo = runs(cfg, only)
  for i, run in enumerate(todo):
    print(f"== [{i + 1}/{len(todo)}] {run.label}"
          f"{'' if run.budget is None else f' (budget {run.budget})'} in "
          f"{workdir / run.dirname}", file=out, flush=True)
    trainer.train_and_evaluate(run.config, str(workdir / run.dirname), mesh=mesh,
                               stream=stream)
  (workdir / "compare_config.json").write_text(config_lib.to_json(cfg))  # what was compared
  return report(cfg, workdir, stream)


def fit_report(cfg, rows: list[dict], workdir=None, law: str = "multi_power") -> str:
  """The loss law (`law`, wsdjax.analysis.law_fit) of each run in `workdir` with decay
  branches: its parameters and leave-one-decay-out check beside the power law's, and its
  figure W/loss_law-<run>.png; then the power law L(C) = E + A C^-alpha per series with 3
  or more budgets (merges and EMA shadows, which have no LR schedule of their own, too):
  the loss of its checkpoints against their lineage's FLOPs."""
  lines = [] if workdir is None else _law_sections(cfg, epath.Path(workdir), law)
  return "\n".join(lines + _power_lines(cfg, rows))


def _law_sections(cfg, workdir: epath.Path, law: str) -> list[str]:
  from wsdjax.analysis import law_report
  lines = []
  for run in runs(cfg):
    folder = workdir / run.dirname
    if not (folder / "checkpoints").exists():
      continue
    try:
      result = law_report.analyse(folder, law, recommend=False)
    except config_lib.ConfigError as e:
      lines += [f"{run.label}: no {law} fit ({e.problem})", ""]
      continue
    plots.plot_law(result, workdir / f"loss_law-{run.dirname}.png")
    lines += [f"== {run.label}", law_report.format_report(result), ""]
  return lines


def _power_lines(cfg, rows: list[dict]) -> list[str]:
  from wsdjax.model import transformer as model_lib
  from wsdjax.analysis import scaling
  per_token = model_lib.flops_per_token(cfg.model)
  lines = []
  name = lambda r: r.get("series") or LABELS[r["strategy"]]  # noqa: E731
  for series in dict.fromkeys(map(name, rows)):
    mine = sorted((r for r in rows if name(r) == series and r["eval_loss"] is not None),
                  key=lambda r: r["tokens"])
    if len(mine) < 3:
      lines.append(f"{series}: the fit needs 3 or more budgets, has {len(mine)}")
      continue
    lines.append(scaling.report(series, [r["tokens"] * per_token for r in mine],
                                [r["eval_loss"] for r in mine]))
  return lines

"""The river-valley report of a run (behind `python -m wsdjax.river_valley`).

The river-valley picture of Wen et al. (2024) on the synthetic bigram task. At a high LR
the iterate oscillates across the valley (the "hill" component of the loss) while it moves
along the river; decaying the LR removes the oscillation and reveals the progress. The run
(any strategy with decay branches, e.g. WSD forking at several points) is trained or
resumed by `trainer.train_and_evaluate`; then, per decay branch, this writes:

  W/river_valley.csv, W/river_valley.md  fork step, end step, main-branch eval loss at the
                                         fork, decayed eval loss, gap (= their difference,
                                         the hill), and each one's distance to the entropy
                                         rate of the chain (the exact optimum)
  W/river_valley.png                     the same, plotted against the fork step

`--plot_only` skips training and reports what W holds (decay branches made later with
`python -m wsdjax.branch` included).
"""

from __future__ import annotations

import csv
import io
import sys

from etils import epath

from wsdjax import config as config_lib
from wsdjax.analysis import compare, plots


FIELDS = ("branch", "fork_step", "step", "main_loss", "decayed_loss", "gap",
          "main_to_optimum", "decayed_to_optimum")


def rows(workdir, entropy_rate: float) -> list[dict]:
  """One row per decayed checkpoint of the run in `workdir` whose fork loss is known."""
  out = []
  for e in plots.read_manifest(workdir):
    if not e.get("decayed") or e.get("start_eval_loss") is None or e.get("eval_loss") is None:
      continue
    main, dec = e["start_eval_loss"], e["eval_loss"]
    out.append(dict(branch=e["branch"], fork_step=e["fork_step"], step=e["step"],
                    main_loss=main, decayed_loss=dec, gap=main - dec,
                    main_to_optimum=main - entropy_rate,
                    decayed_to_optimum=dec - entropy_rate,
                    start_eval_loss=main, eval_loss=dec))
  return sorted(out, key=lambda r: r["fork_step"])


def to_csv(table: list[dict]) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(table)
  return buf.getvalue()


def to_markdown(table: list[dict], entropy_rate: float) -> str:
  lines = ["# River valley", "",
           f"Entropy rate of the chain (the exact optimum): {entropy_rate:.4f} nats/token. "
           "`gap` = main-branch eval loss at the fork minus the decayed loss: the hill "
           "component the decay removed. The decayed loss tracks the river.", "",
           "| branch | fork step | end step | main loss | decayed loss | gap (hill) | "
           "main - optimum | decayed - optimum |", "|---|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['branch']} | {r['fork_step']} | {r['step']} | {r['main_loss']:.4f} | "
                 f"{r['decayed_loss']:.4f} | {r['gap']:.4f} | {r['main_to_optimum']:.4f} | "
                 f"{r['decayed_to_optimum']:.4f} |")
  return "\n".join(lines + ["", "![river valley](river_valley.png)"]) + "\n"


def report(cfg, workdir, stream=None) -> list[dict]:
  """Write river_valley.{csv,md,png} into `workdir` from its run; return the rows."""
  h = compare.entropy_rate(cfg)
  if h is None:
    raise config_lib.ConfigError(
        "data.source", f"is {cfg.data.source!r}; the river-valley report needs the bigram "
        "task's exact optimum", "use --config.data.source=bigram (configs/river_valley.py)")
  workdir = epath.Path(workdir)
  table = rows(workdir, h)
  main_eval = plots.read_metrics(workdir).get("main", {}).get("eval", [])
  plots.plot_river_valley(table, h, workdir / "river_valley.png", main_eval)
  (workdir / "river_valley.csv").write_text(to_csv(table))
  (workdir / "river_valley.md").write_text(to_markdown(table, h))
  out = stream or sys.stdout
  print(f"{'branch':>10} {'fork':>6} {'end':>6} {'main':>8} {'decayed':>8} {'gap':>8} "
        f"{'main-opt':>9} {'dec-opt':>8}", file=out)
  for r in table:
    print(f"{r['branch']:>10} {r['fork_step']:>6} {r['step']:>6} {r['main_loss']:>8.4f} "
          f"{r['decayed_loss']:>8.4f} {r['gap']:>8.4f} {r['main_to_optimum']:>9.4f} "
          f"{r['decayed_to_optimum']:>8.4f}", file=out)
  print(f"entropy rate {h:.4f}; wrote {workdir / 'river_valley.png'}, .md, .csv", file=out,
        flush=True)
  return table

"""`python -m wsdjax.river_valley --config configs/river_valley.py --workdir W`

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

from wsdjax.runtime import hugepages

FIELDS = ("branch", "fork_step", "step", "main_loss", "decayed_loss", "gap",
          "main_to_optimum", "decayed_to_optimum")


def rows(workdir, entropy_rate: float) -> list[dict]:
  """One row per decayed checkpoint of the run in `workdir` whose fork loss is known."""
  from wsdjax.analysis import plots
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
  from wsdjax import compare, config as config_lib
  from wsdjax.analysis import plots
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


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file("config", None, "Config file "
                                           "(configs/river_valley.py).", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Run directory (created or resumed).")
  plot_only = flags.DEFINE_bool("plot_only", False, "Do not train; report what W holds.")
  return config, workdir, plot_only


def main(argv, config, workdir, plot_only) -> None:
  from wsdjax.runtime import cli
  cfg = cli.loaded_config(argv, config, "configs/river_valley.py")
  cli.require_workdir(workdir.value)
  if cfg.data.source != "bigram":
    cli.fail(f"data.source: is {cfg.data.source!r}; the river valley needs the bigram task's "
             f"exact optimum; use --config.data.source=bigram")
  if not plot_only.value:
    from wsdjax.training import trainer
    trainer.train_and_evaluate(cfg, workdir.value)
  report(cfg, workdir.value)


if __name__ == "__main__":
  hugepages.reexec()  # before jax allocates anything (see wsdjax/runtime/hugepages.py)
  from wsdjax.runtime import cli
  _flags = _define_flags()
  cli.run(lambda argv: main(argv, *_flags))

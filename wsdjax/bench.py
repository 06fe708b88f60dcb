"""`python -m wsdjax.bench --config configs/X.py [--steps N] [--json out.json]`
`python -m wsdjax.bench --mode data [--store DIR] [--steps N] [--json out.json]`

`--mode data` measures the data path instead (wsdjax/data/throughput.py): the token-store
reader at the paper configs' batch shape and `prepare` per tokenizer on 1 and 2 workers.

How fast the trainer turns compute into progress, measured the same way on every machine.
It drives the real trainer pieces (`Trainer`: the same AOT-compiled train step, data
pipeline, metric logging and `CheckpointTree` async save; the FLOPs of
`model.flops_per_token`, as the metrics use) in a scratch workdir and reports:

  compile         seconds to lower + compile the train step
  step time       median, min and max of N steps after `--warmup` steps
  CPU time        process CPU seconds per step (median, all threads): on a shared host
                  it moves much less than wall time, so it compares variants better
  tokens/s, MFU   against `metrics.device_peak_flops` (TPU/GPU: bf16 table); on CPU a
                  float32 matmul peak measured in this process, between the timed steps
                  (median of the measurements), since CPU speed drifts with load
  host share      host time per step (next batch, host->device, dispatch, logging every
                  `train.log_every` steps) / step time
  checkpoint      stall of an async save: save() plus the steps that run while it writes,
                  minus as many plain steps (the mean of the plain steps just before and
                  after), per save (median over --saves, and the mean +- its standard
                  error: single steps vary by ~10% on a busy CPU), as a share of a
                  step, with the arrays' compression (`checkpoint.compression`); the
                  size of a save, and what its integrity check costs: computing the
                  SHA-256 of every file when it completes (a background thread), and
                  checking them before a restore, next to the restore itself
  fork            forking a decay branch (holding main while the branch trains from the
                  same arrays, its first step not donating): bytes copied, shared buffers
  memory          the compiled step's memory analysis, and the process's peak RSS (CPU)
                  or the device's peak bytes in use (GPU/TPU)
  HLO FLOPs       XLA's cost analysis of the compiled step, next to the model's FLOPs
                  (it counts the body of a while loop once, so with scan_layers=True it
                  sees one layer of L: a cross-check of the per-layer and head FLOPs)

Every step is timed to completion (`block_until_ready`) so its spread can be reported; the
training loop itself overlaps the host work of a step with the previous step's compute.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from wsdjax.runtime import cli

from wsdjax.runtime import outputs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_SAVES = flags.DEFINE_integer("saves", 3, "Async checkpoint saves to time (0: skip).")
_JSON = flags.DEFINE_string("json", None, "Write the results as JSON to this path.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch dir (default: a temp dir, removed).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "data"], "train: the train step; "
                          "data: the token-store reader and prepare.")
_STORE = flags.DEFINE_string("store", None, "--mode data: a local store to read (default: "
                             "one prepared from the bundled corpus).")
_PROFILE = flags.DEFINE_string("profile", None, "Write a jax.profiler trace of 3 steps here "
                               "(and list the ops that took the most device time).")


def main_data(argv) -> None:
  """--mode data: the reader and prepare throughput (no config)."""
  from wsdjax.data import throughput
  if len(argv) > 1:
    cli.fail(f"arguments: unexpected {' '.join(argv[1:])!r}; pass options as --flag=value")
  if _STEPS.value < 1:
    cli.fail(f"--steps: must be >= 1, got {_STEPS.value}; e.g. --steps 50")
  outputs.check_file("--json", _JSON.value)
  res = throughput.run(store=_STORE.value, steps=_STEPS.value)
  _report(throughput.table(res), res)


def _report(text: str, res: dict) -> None:
  """Print the table; write the results to --json if given."""
  print(text, flush=True)
  if _JSON.value:
    outputs.write_json("--json", _JSON.value, res)
    print(f"wrote {_JSON.value}", file=sys.stderr)


def main(argv):
  """Check the flags, benchmark (`training.benchmark.run`), report its table."""
  if _MODE.value == "data":
    return main_data(argv)
  from wsdjax.training import benchmark
  cli.loaded_config(argv, _CONFIG, "configs/small.py")
  if _WORKDIR.value and (holder := outputs.run_holding(_WORKDIR.value)):
    cli.fail(f"--workdir: {_WORKDIR.value} is inside the run {holder}, which the bench would "
             "train into; pass a new scratch folder (or none: a temporary one)")
  if _STEPS.value < 1:
    cli.fail(f"--steps: must be >= 1, got {_STEPS.value}; e.g. --steps 10")
  if _WARMUP.value < 0:
    cli.fail(f"--warmup: must be >= 0, got {_WARMUP.value}; e.g. --warmup 2")
  if _SAVES.value < 0:
    cli.fail(f"--saves: must be >= 0, got {_SAVES.value}; 0 skips the checkpoint stall")
  outputs.check_file("--json", _JSON.value)
  res = benchmark.run(_CONFIG.value, steps=_STEPS.value, warmup=_WARMUP.value,
                      saves=_SAVES.value, workdir=_WORKDIR.value, profile_dir=_PROFILE.value)
  _report(benchmark.table(res), res)


if __name__ == "__main__":
  cli.run(main)

"""`python -m wsdjax.aot --config C --topology T [--config.a.b=v] [--json F]`

Compiles the config's real train and eval steps for Cloud TPU slice T (a gcloud accelerator
type: v4-64, v5litepod-64 / v5e-64, v5p-8, v6e-8, ...; `--list` shows all) on this host,
which needs no TPU, only libtpu (`pip install -e '.[tpu]'`). Prints the chips, the mesh,
per-chip HBM (state, temporaries, total against the chip's HBM), model and XLA FLOPs per
step, collective traffic per step by kind, the step-time bound (the chips' peak FLOP/s and
ICI bandwidth), the traffic against what FSDP needs at least (`wsdjax.runtime.tpu.fsdp`:
the ratio, train and eval) and the compile time (`wsdjax.runtime.tpu.aot`). Exit 0: fits
with at least 10% of HBM to spare; 1: it does not (by how much, the largest temporaries,
what to change); 2: bad input.
"""

import os
import shutil
import sys

from absl import flags
from ml_collections import config_flags

from wsdjax.runtime import cli

from wsdjax.runtime import outputs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "Cloud TPU slice, e.g. v5litepod-64, v4-64.")
_JSON = flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")
_LIST = flags.DEFINE_bool("list", False, "List the TPU slices --topology accepts and exit.")

EXIT_DOES_NOT_FIT = 1


def _si(x: float, unit: str, base: int = 1000) -> str:
  """x with the largest prefix that keeps it >= 1: 3.2 GB, 512 MiB, 7.1 TFLOP."""
  prefixes = ("T", "G", "M", "K") if base == 1000 else ("Ti", "Gi", "Mi", "Ki")
  for i, p in enumerate(prefixes):
    scale = base ** (len(prefixes) - i)
    if abs(x) >= scale:
      return f"{x / scale:.2f} {p}{unit}"
  return f"{x:.0f} {unit}"


def _traffic(by_kind: dict) -> str:
  return ", ".join(f"{k} {_si(v, 'B')}" for k, v in by_kind.items() if v) or "none"


def _against(minimum: dict, ratio: float | None) -> str:
  if ratio is None:
    return "; FSDP minimum none (nothing sharded to gather)"
  return f"; FSDP minimum {_traffic(minimum)}: x{ratio:.2f}"


def format_report(r, advice: str | None = None) -> str:
  """The report as the console shows it."""
  gib = lambda b: _si(b, "B", 1024)  # noqa: E731
  mesh = " x ".join(f"{k} {v}" for k, v in r.mesh.items())
  kernels = ", ".join(f"{k} {v}" for k, v in r.kernels.items())
  lines = [f"{r.config} on {r.slice} ({r.topology}, {r.chips} chips), mesh {mesh}",
           f"  kernels: {kernels}"]
  hbm = f"HBM {gib(r.hbm_bytes)} a chip"
  if r.error:
    lines += [f"  per chip: state {gib(r.state_bytes)}, temporaries {gib(r.temp_bytes)} "
              f"> {hbm}: does not fit (compile {r.compile_s:.0f} s)"]
  else:
    share = r.total_bytes / r.hbm_bytes
    host = f"; host {gib(r.host_bytes)}" if r.host_bytes else ""
    lines += [f"  per chip: state {gib(r.state_bytes)} + temporaries {gib(r.temp_bytes)}"
              f" -> total {gib(r.total_bytes)} of {hbm} ({share:.0%}; eval "
              f"{gib(r.eval_total_bytes)}){host}",
              f"  per step: model {_si(r.model_flops, 'FLOP')}, compiled program "
              f"{_si(r.xla_flops, 'FLOP')} (matmuls and attention kernels, recompute "
              "included)",
              "  collectives per chip per step: " + _traffic(r.collective_bytes)
              + _against(r.fsdp_minimum, r.collective_ratio),
              "  eval per batch: " + _traffic(r.eval_collective_bytes)
              + _against(r.eval_fsdp_minimum, r.eval_collective_ratio),
              f"  step time >= {r.step_time_bound_s:.3f} s (compute {r.compute_bound_s:.3f} s at "
              f"peak FLOP/s, collectives {r.collective_bound_s:.3f} s at full ICI bandwidth); "
              f"compile {r.compile_s:.0f} s"]
  if r.largest_temporaries and not r.fits:
    lines.append("  largest temporaries:")
    lines += [f"    {gib(t['bytes']):>10}  {t['type_text']}  {t['op_name']}"
              for t in r.largest_temporaries]
  lines.append("  fits (<= 90% of HBM)" if r.fits else f"  does not fit: {advice}")
  return "\n".join(lines)


def main(argv):
  from wsdjax.runtime.tpu import host, slices
  if _LIST.value:
    print("\n".join(slices.names()))
    return
  cfg = cli.loaded_config(argv, _CONFIG, "configs/paper_0.1b.py")
  if not _TOPOLOGY.value:
    cli.fail("--topology: missing; pass a Cloud TPU slice, e.g. --topology v5litepod-64 "
             "(--list shows them all)")
  try:
    tpu_slice = slices.lookup(_TOPOLOGY.value)
  except slices.UnknownSlice as e:
    cli.fail(str(e))
  if not host.installed("libtpu"):
    cli.fail("libtpu: not installed, and compiling for a TPU needs it; install it with "
             "pip install -e '.[tpu]' (or pip install 'jax[tpu]')")
  outputs.check_file("--json", _JSON.value)  # before compiling, which takes minutes
  from wsdjax.runtime.tpu import aot
  aot.quiet_libtpu_environment(tpu_slice)
  dump_dir = aot.new_dump_dir()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + aot.dump_flags(dump_dir)).strip()
  try:
    report = aot.compile_for_slice(cfg, tpu_slice, dump_dir)
  finally:
    shutil.rmtree(dump_dir, ignore_errors=True)
  advice = None if report.fits else aot.advice(cfg, report)
  print(format_report(report, advice), flush=True)
  if _JSON.value:
    outputs.write_json("--json", _JSON.value, report.as_dict() | {"advice": advice})
  if not report.fits:
    sys.exit(EXIT_DOES_NOT_FIT)


if __name__ == "__main__":
  cli.run(main)

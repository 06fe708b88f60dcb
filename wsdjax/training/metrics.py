"""What a user watches: console lines, TensorBoard events, a JSONL log; tokens/s and MFU.

MFU = (model FLOPs per token x tokens per second) / peak FLOP/s of the devices, with the
model FLOPs from `wsdjax.model.transformer.flops_per_token` (the one formula used everywhere). Peaks:
a table of dense bf16 peaks for TPUs/GPUs by device kind; on CPU, a float32 matmul peak
measured on the spot (CPU runs float32).
Only process 0 writes; other processes get a writer that drops everything.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics
from clu import parameter_overview
from etils import epath

# Dense bf16 peak FLOP/s per jax device, by substring of the lower-cased device_kind; the
# first match wins, so a more specific name comes before its prefix. A jax device is a chip
# from TPU v4 on (megacore) and a GPU, but one of the two TensorCores of a v2/v3 chip (half
# the chip's 45 / 123 TFLOP/s). T4 and V100 have no bf16 matmul units: XLA runs bf16 at
# their float32 rate (8.1 and 15.7 TFLOP/s), which is what a bf16 run can reach.
_PEAK_BF16 = (
    ("v6", 918e12), ("v5p", 459e12), ("v5 lite", 197e12), ("v5e", 197e12),
    ("v5", 459e12), ("v4", 275e12),
    ("v3", 61.5e12), ("v2", 22.5e12), ("b200", 2250e12), ("h200", 989e12),
    ("h100 pcie", 756e12), ("h100 nvl", 835e12), ("h100", 989e12), ("h800", 989e12),
    ("a100", 312e12), ("l40s", 362e12), ("l4", 121e12), ("a10", 125e12), ("t4", 8.1e12),
    ("v100", 15.7e12),
)


def table_peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one device of this kind from the table, or None."""
  kind = device_kind.lower()
  for key, peak in _PEAK_BF16:
    if key in kind:
      return peak
  return None


def measure_cpu_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """Best-of-`repeats` FLOP/s of a jitted float32 n x n x n matmul on the default device."""
  a = jnp.ones((n, n), jnp.float32)
  b = jnp.ones((n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best


@functools.lru_cache(maxsize=None)
def device_peak_flops() -> tuple[float, str]:
  """(peak FLOP/s of all local devices of this process, how it was obtained)."""
  dev = jax.local_devices()[0]
  if dev.platform == "cpu":
    # Forced host devices share the same cores: the process's peak is one matmul's.
    return measure_cpu_matmul_peak(), "measured f32 matmul (CPU)"
  peak = table_peak_flops(dev.device_kind)
  if peak is not None:
    return peak * jax.local_device_count(), f"bf16 table ({dev.device_kind})"
  return math.nan, f"unknown device kind {dev.device_kind!r}"


def mfu(flops_per_token: float, tokens_per_s_process: float) -> float:
  """Model FLOPs utilisation of this process's devices (0..1; NaN if peak unknown)."""
  peak, _ = device_peak_flops()
  return flops_per_token * tokens_per_s_process / peak


class RewrittenFile:
  """An append-only text file on an object store (gs://), which cannot append: the text is
  kept in memory and the whole object rewritten at most every `every_s` seconds and at
  close(), so a resumed run keeps the rows of earlier runs."""

  def __init__(self, path, every_s: float = 30.0):
    self.path, self.every_s = epath.Path(path), every_s
    self.text = self.path.read_text() if self.path.exists() else ""
    self._written_at, self._dirty = time.monotonic(), False

  def write(self, text: str) -> None:
    self.text += text
    self._dirty = True

  def flush(self, force: bool = False) -> None:
    if self._dirty and (force or time.monotonic() - self._written_at >= self.every_s):
      self.path.write_text(self.text)
      self._written_at, self._dirty = time.monotonic(), False

  def close(self) -> None:
    self.flush(force=True)


class MetricWriter:
  """Console + TensorBoard (`DIR/tb`) + JSONL (`DIR/metrics.jsonl`), process 0 only. The
  files are opened at the first `write`, so a run that fails to start writes none."""

  def __init__(self, workdir, enabled: bool | None = None, stream=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.stream = stream or sys.stdout
    self.workdir = epath.Path(workdir)
    self._tb = None
    self._jsonl = None

  def _open(self) -> None:
    self.workdir.mkdir(parents=True, exist_ok=True)
    from tensorboardX import SummaryWriter  # no TensorFlow needed
    self._tb = SummaryWriter(str(self.workdir / "tb"), flush_secs=10)
    path = self.workdir / "metrics.jsonl"
    self._jsonl = RewrittenFile(path) if str(path).startswith("gs://") else path.open("a")

  def print(self, line: str) -> None:
    if self.enabled:
      print(line, file=self.stream, flush=True)

  def write(self, step: int, metrics: Mapping[str, float], branch: str = "main") -> None:
    """Log scalars at `step`: TensorBoard tag `<branch>/<name>`, one JSONL row."""
    if not self.enabled:
      return
    if self._tb is None:
      self._open()
    row = {"step": int(step), "branch": branch}
    for name, value in metrics.items():
      value = float(np.asarray(value))
      row[name] = value
      if math.isfinite(value):
        self._tb.add_scalar(f"{branch}/{name}", value, int(step))
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._jsonl.close()


# ---- the metrics the trainer accumulates (clu.metrics collections) ----
# TrainWindow: the train metrics of the steps since the last log row (mean loss and
# gradient norm, the LR of the last update), merged on device each step (no host sync).
TrainWindow = clu_metrics.Collection.create(
    train_loss=clu_metrics.Average.from_output("train_loss"),
    grad_norm=clu_metrics.Average.from_output("grad_norm"),
    lr=clu_metrics.LastValue.from_output("lr"))

# EvalLoss: the mean of the per-batch mean losses over the fixed validation batches
# (equal-sized batches, so the mean over their tokens).
EvalLoss = clu_metrics.Collection.create(eval_loss=clu_metrics.Average.from_output("loss"))


@jax.jit
def _first_step(step_metrics):
  return TrainWindow.single_from_model_output(**step_metrics)


@jax.jit
def _next_step(window, step_metrics):
  return window.merge(TrainWindow.single_from_model_output(**step_metrics))


def accumulate(window, step_metrics: Mapping[str, Any]):
  """`window` with one more step's metrics merged in (a new window when None). Jitted:
  one dispatch per training step (unjitted, clu's merge is a dozen small ops, each its
  own dispatch)."""
  return _first_step(step_metrics) if window is None else _next_step(window, step_metrics)


def mean_eval_loss(batch_losses) -> float:
  """The eval loss (`EvalLoss`) of per-batch mean losses; every evaluation reduces so."""
  total = None
  for loss in batch_losses:
    one = EvalLoss.single_from_model_output(loss=loss)
    total = one if total is None else total.merge(one)
  return float(total.compute()["eval_loss"])


def parameter_table(params) -> str:
  """clu's table of the params (name, shape, dtype, size; total), from arrays or shapes."""
  return parameter_overview.get_parameter_overview(params, include_stats=False)


def log_row(metrics: Mapping[str, Any], n: int, tokens_per_step: int, elapsed: float,
            wait: float, flops_per_token: float, entropy_rate: float | None) -> dict:
  """A log row over a window of `n` steps of `tokens_per_step` that took `elapsed` s (`wait`
  of them waiting on input): the window's metrics (`TrainWindow.compute()`), tokens/s,
  MFU, input share, step time, and the gap to the optimal loss when the data's entropy
  rate is known."""
  tokens_per_s = n * tokens_per_step / max(elapsed, 1e-9)
  row = {k: float(v) for k, v in metrics.items()}
  row["tokens_per_s"] = tokens_per_s
  row["mfu"] = mfu(flops_per_token, tokens_per_s / jax.process_count())
  row["input_share"] = wait / max(elapsed, 1e-9)
  row["step_time_s"] = elapsed / max(n, 1)
  if entropy_rate is not None:
    row["gap_to_optimum"] = row["train_loss"] - entropy_rate
  return row


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress_line(branch: str, step: int, metrics: Mapping[str, float], eta_s: float) -> str:
  """One console line: step, loss, lr, grad norm, tokens/s, MFU, ETA."""
  m = {k: float(v) for k, v in metrics.items()}
  parts = [f"{branch:>11} step {step:>6}", f"loss {m['train_loss']:.4f}",
           f"lr {m['lr']:.3e}", f"gnorm {m['grad_norm']:.3f}"]
  if "tokens_per_s" in m:
    parts.append(f"{m['tokens_per_s']:,.0f} tok/s")
  if "mfu" in m and math.isfinite(m["mfu"]):
    parts.append(f"MFU {100 * m['mfu']:.1f}%")
  if "input_share" in m:
    parts.append(f"input {100 * m['input_share']:.1f}%")
  parts.append(f"ETA {format_duration(eta_s)}")
  return " | ".join(parts)


def results_table(rows: list[dict], entropy_rate: float | None = None) -> str:
  """The table of decayed checkpoints: budget, step, tokens, FLOPs of the run, eval loss."""
  head = f"{'checkpoint':>14} {'budget':>8} {'step':>8} {'tokens':>12} {'run FLOPs':>10} {'eval loss':>10}"
  if entropy_rate is not None:
    head += f" {'gap to opt':>10}"
  lines = [head]
  for r in rows:
    loss = r.get("eval_loss")
    line = (f"{r['branch']:>14} {r['budget']:>8} {r['step']:>8} {r['tokens']:>12,} "
            f"{r['run_flops']:>10.3g} {loss if loss is None else format(loss, '.4f'):>10}")
    if entropy_rate is not None and loss is not None:
      line += f" {loss - entropy_rate:>10.4f}"
    lines.append(line)
  return "\n".join(lines)

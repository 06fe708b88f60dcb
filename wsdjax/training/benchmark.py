"""The measurements behind `python -m wsdjax.bench` (each one explained in that command's
docstring): `run(cfg, ...)` drives the real trainer pieces (`Trainer`: its AOT-compiled
train step, data pipeline, metric logging and the checkpoint tree's async save) one timed
step at a time in a scratch workdir and returns the results; `table(results)` formats them.
"""

from __future__ import annotations

import collections
import glob
import gzip
import io
import json
import math
import os
import resource
import statistics
import tempfile
import time

import jax

from wsdjax import config as config_lib
from wsdjax import data as data_lib
from wsdjax.checkpoint import integrity
from wsdjax.model import transformer as model_lib
from wsdjax.schedule.plan import StateRef
from wsdjax.training import metrics
from wsdjax.training import state as state_lib
from wsdjax.training import trainer as trainer_lib


# ---- measurements ----------------------------------------------------------------------


def _live_bytes() -> int:
  return sum(a.nbytes for a in jax.live_arrays())


def _pointers(tree) -> list[int]:
  return [shard.data.unsafe_buffer_pointer() for leaf in jax.tree.leaves(tree)
          for shard in leaf.addressable_shards]


def _peak_memory() -> tuple[int, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak bytes in use"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  return int(rss) * 1024, "process peak RSS"


def _compiled_stats(compiled) -> dict:
  out = {}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["hlo_flops_per_step"] = float(cost.get("flops", math.nan))
  except Exception:  # noqa: BLE001 - not every backend has a cost model
    out["hlo_flops_per_step"] = math.nan
  try:
    mem = compiled.memory_analysis()
    out["compiled_bytes"] = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in
                             ("argument", "output", "temp", "generated_code")}
  except Exception:  # noqa: BLE001
    out["compiled_bytes"] = {}
  return out


_KINDS = (("attention", ("cudnn", "fmha", "sdpa", "flash", "attention")),
          ("matmul", ("gemm", "nvjet", "cublas", "cutlass", "dot", "matmul")))


def op_kind(op: dict) -> str:
  """'attention', 'matmul' or 'other' (elementwise, reductions, copies) for an op of
  `trace_top`, by the names of its HLO op and kernel."""
  names = f"{op['op']} {op['kernel']}".lower()
  for kind, marks in _KINDS:
    if any(m in names for m in marks):
      return kind
  return "other"


def time_by_kind(ops: list[dict]) -> dict[str, float]:
  """Device ms per step of each `op_kind` over all of `ops`."""
  out = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
  for op in ops:
    out[op_kind(op)] += op["ms_per_step"]
  return out


def trace_top(profile_dir: str, steps: int, n: int | None = 12) -> list[dict]:
  """The `n` ops (None: all) that took the most device time in the Perfetto trace under
  `profile_dir` (`jax.profiler.trace(..., create_perfetto_trace=True)`) of `steps` steps:
  op (the HLO op where the event names one, else the event's name), its longest kernel's
  name, ms per step and share of all device op time. Device ops are the events of the '/device:...'
  processes (GPU streams, TPU cores; not the plugins' '/device:CUSTOM:...' tracks); on CPU,
  those of XLA's worker threads."""
  paths = sorted(glob.glob(os.path.join(profile_dir, "**", "*.trace.json.gz"), recursive=True))
  if not paths:
    return []
  with gzip.open(paths[-1], "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  meta = {(e["name"], e["pid"], e.get("tid")): e.get("args", {}).get("name", "")
          for e in events if e.get("ph") == "M"}
  procs = {pid: name for (kind, pid, _), name in meta.items() if kind == "process_name"}
  threads = {(pid, tid): name for (kind, pid, tid), name in meta.items()
             if kind == "thread_name"}
  # '/device:CUSTOM:...' processes are profiler plugins' own tracks (libtpu, loaded in the
  # process by a TPU compile, adds 'Megascale Trace'), not devices that ran the step.
  devices = {pid for pid, name in procs.items()
             if name.startswith("/device:") and not name.startswith("/device:CUSTOM")}

  def on_device(e) -> bool:
    if devices:
      return e["pid"] in devices
    return threads.get((e["pid"], e.get("tid")), "").startswith("tf_XLA")

  totals, kernels = collections.Counter(), collections.defaultdict(collections.Counter)
  for e in events:
    if e.get("ph") == "X" and on_device(e):
      op, us = e.get("args", {}).get("hlo_op") or e["name"], float(e.get("dur", 0.0))
      totals[op] += us
      kernels[op][e["name"]] += us
  everything = sum(totals.values()) or 1.0
  return [{"op": op, "kernel": kernels[op].most_common(1)[0][0],
           "ms_per_step": us / 1e3 / steps, "share": us / everything}
          for op, us in totals.most_common(n)]


class _Peak:
  """Peak FLOP/s of this process's devices; on CPU re-measured between steps (median)."""

  def __init__(self, given: float | None = None):
    self.cpu = given is None and jax.local_devices()[0].platform == "cpu"
    peak, self.source = (given, "given") if given else metrics.device_peak_flops()
    self.samples = [peak]

  def sample(self) -> None:
    if self.cpu:
      self.samples.append(metrics.measure_cpu_matmul_peak(repeats=3))

  @property
  def value(self) -> float:
    return statistics.median(self.samples)


_PROFILED_STEPS = 3


def run(cfg, steps: int = 10, warmup: int = 2, saves: int = 3, workdir: str | None = None,
        profile_dir: str | None = None, mesh=None, peak_flops: float | None = None) -> dict:
  """Benchmark `cfg` with the real Trainer in `workdir` (default: a temp dir) on `mesh`
  (default: from `cfg.mesh`); returns the results (`table` formats them). `peak_flops`
  replaces the measured/table peak (tests use it to skip the CPU matmul measurement)."""

  config_lib.validate(cfg, jax.device_count() if mesh is None else mesh.devices.size)
  with tempfile.TemporaryDirectory(prefix="wsdjax-bench-") as tmp:
    with trainer_lib.Trainer(cfg, workdir or tmp, mesh=mesh, stream=io.StringIO()) as trainer:
      return _run(trainer, steps, warmup, saves, profile_dir, peak_flops)


def _run(trainer, steps, warmup, saves, profile_dir, peak_flops) -> dict:
  cfg = trainer.cfg
  res = {"config": cfg.name, "model": model_lib.describe(cfg.model),
         "dense_impl": cfg.model.dense_impl, "attention_impl": cfg.model.attention_impl,
         "layer_loop": cfg.model.layer_loop, "backend": jax.default_backend(),
         "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
         "steps": steps, "warmup": warmup}
  peak = _Peak(peak_flops)
  res["peak_source"] = peak.source
  loop = _Loop(trainer)
  res["compile_s"] = loop.compile_s
  res.update(_compiled_stats(loop.step_fn))
  for _ in range(warmup):
    loop.one_step()
  res.update(_step_times(loop, steps, peak))
  if saves:
    res.update(_checkpoint_stall(loop, saves, res["step_s_median"]))
    res.update(_integrity_costs(trainer.tree, trainer.steps.abstract, loop.seg.branch,
                                loop.step))
  res.update(_fork(loop))
  if profile_dir:
    res.update(_profile(loop, profile_dir))
  loop.it.close()
  res["peak_memory_bytes"], res["peak_memory_source"] = _peak_memory()
  return res


class _Loop:
  """The training loop's work, one timed step at a time: the next batch, host-to-device,
  the compiled update (the donating step of the first segment, what the loop uses for most
  steps), and the logging of every `log_every` steps."""

  def __init__(self, trainer):
    self.trainer, self.seg = trainer, trainer.plan.segments[0]
    t0 = time.perf_counter()
    self.step_fn = trainer.steps.train(self.seg.schedule, donate=True)
    self.compile_s = time.perf_counter() - t0
    self.no_donate = trainer.steps.train(self.seg.schedule, donate=False)  # a fork's first
    self.it = trainer.data.train_iterator(0)
    self.state = state_lib.init_state(trainer.cfg, trainer.mesh)
    self.metrics = None
    self.step = 0
    self.cpu_s = 0.0  # process CPU time of the last step

  def next_batch(self):
    return data_lib.to_global(next(self.it), self.trainer.steps.batch_sh)

  def one_step(self) -> tuple[float, float]:
    """Run the loop's work for one step; (step seconds, host seconds)."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    batch = self.next_batch()
    self.state, self.metrics = self.step_fn(self.state, batch)
    t2 = time.perf_counter()
    jax.block_until_ready((self.state, self.metrics))
    t3 = time.perf_counter()
    host = t2 - t0
    self.step += 1
    if self.step % self.trainer.cfg.train.log_every == 0:  # TensorBoard, JSONL, console
      self.trainer.log(self.seg, self.step, self.metrics, t3 - t0, 1, 0.0, 0)
      host += time.perf_counter() - t3
    self.cpu_s = time.process_time() - cpu0
    return time.perf_counter() - t0, host


def _step_times(loop: _Loop, steps: int, peak: "_Peak") -> dict:
  """Step time, CPU time, host share, tokens/s and MFU over `steps` timed steps."""
  times, hosts, cpu = [], [], []
  for i in range(steps):
    if i % max(1, steps // 4) == 0:
      peak.sample()
    dt, host = loop.one_step()
    times.append(dt)
    hosts.append(host)
    cpu.append(loop.cpu_s)
  peak.sample()
  med = statistics.median(times)
  tokens = loop.trainer.tokens_per_step
  fpt = model_lib.flops_per_token(loop.trainer.cfg.model)
  return dict(step_s_median=med, step_s_min=min(times), step_s_max=max(times),
              step_s_all=times, tokens_per_step=tokens, tokens_per_s=tokens / med,
              model_flops_per_token=fpt, model_flops_per_step=fpt * tokens,
              peak_flops=peak.value, peak_flops_samples=peak.samples,
              cpu_s_median=statistics.median(cpu), host_s_per_step=statistics.mean(hosts),
              host_share=statistics.mean(hosts) / med,
              train_loss=float(loop.metrics["train_loss"]),
              mfu=fpt * tokens / med / (peak.value * jax.process_count()))


def _checkpoint_stall(loop: _Loop, saves: int, step_s: float) -> dict:
  """The steps that run while an async save writes, against the plain steps just before
  and after (neighbours, not the median: CPU speed drifts on a shared host)."""
  tree, stalls = loop.trainer.tree, []
  for _ in range(saves):
    tree.wait()
    before, _ = loop.one_step()
    t0 = time.perf_counter()
    loop.trainer.save(loop.seg, loop.step, loop.step,
                      trainer_lib.Live(loop.state, loop.it.position()), 0.0)
    save_call = time.perf_counter() - t0
    spent, n = save_call, 0
    while (tree.saving or n == 0) and n < 50:
      spent += loop.one_step()[0]
      n += 1
      tree.poll()
    after, _ = loop.one_step()
    stalls.append((spent - n * (before + after) / 2, save_call, n))
  tree.wait()
  stall_s = [s[0] for s in stalls]
  return dict(ckpt_stall_s=statistics.median(stall_s),
              ckpt_stall_mean_s=statistics.mean(stall_s),
              ckpt_stall_se_s=_standard_error(stall_s),
              ckpt_save_call_s=statistics.median(s[1] for s in stalls),
              ckpt_compression=tree.compression,
              ckpt_steps_while_saving=[s[2] for s in stalls],
              ckpt_stall_all_s=stall_s, ckpt_stall_share=statistics.median(stall_s) / step_s)


def _fork(loop: _Loop) -> dict:
  """A WSD fork: the branch starts from main's arrays, its first step not donating them;
  bytes copied, buffers shared, what the branch's first step allocates, main intact."""
  jax.block_until_ready(loop.state)
  before = _live_bytes()
  t0 = time.perf_counter()
  main = trainer_lib.Live(loop.state, loop.it.position())
  branch = trainer_lib.Live(main.state, dict(main.position))
  res = {"fork_s": time.perf_counter() - t0, "fork_copy_bytes": _live_bytes() - before}
  main_ptrs = _pointers(main.state)
  res["fork_shared_buffers"] = sum(a == b for a, b in zip(main_ptrs, _pointers(branch.state)))
  res["state_buffers"] = len(main_ptrs)
  res["state_bytes"] = sum(x.nbytes for x in jax.tree.leaves(main.state))
  batch = loop.next_batch()
  loop.metrics = None  # the loop's last metrics: freeing them must not count against the fork
  before = _live_bytes()
  t0 = time.perf_counter()
  new_state, metrics = loop.no_donate(branch.state, batch)
  jax.block_until_ready((new_state, metrics))
  res["fork_first_step_s"] = time.perf_counter() - t0
  grown = _live_bytes() - before - sum(x.nbytes for x in jax.tree.leaves((new_state, metrics)))
  res["fork_first_step_extra_bytes"] = grown
  res["fork_main_intact"] = (_pointers(main.state) == main_ptrs and
                             not any(x.is_deleted() for x in jax.tree.leaves(main.state)))
  return res


def _profile(loop: _Loop, profile_dir: str) -> dict:
  """A jax.profiler trace of `_PROFILED_STEPS` steps and its costliest ops."""
  with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
    for _ in range(_PROFILED_STEPS):
      loop.one_step()
  ops = trace_top(profile_dir, _PROFILED_STEPS, n=None)
  return {"profile_dir": profile_dir, "profile_top": ops[:12], "profile_ops": ops,
          "profile_ms_by_kind": time_by_kind(ops)}


def _standard_error(xs: list[float]) -> float | None:
  """Standard error of the mean of `xs` (sample stdev / sqrt(n)); None for fewer than 2."""
  return statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) >= 2 else None


def _integrity_costs(tree, abstract, branch: str, step: int) -> dict:
  """Seconds to checksum the newest save's files (what the tree does in the background
  when a save completes), to check them (before each restore), and to restore it."""
  ref = StateRef(branch, max(s for s in tree.steps(branch) if s <= step))
  top, t0 = tree.path(ref), time.perf_counter()
  integrity.record(tree.root, ref, top)
  t1 = time.perf_counter()
  assert tree.damage(ref) is None
  t2 = time.perf_counter()
  jax.block_until_ready(tree.restore(ref, abstract)[0])
  t3 = time.perf_counter()
  return dict(ckpt_bytes=sum((top / rel).stat().length for rel in integrity.files_of(top)),
              ckpt_checksum_s=t1 - t0, ckpt_verify_s=t2 - t1, ckpt_restore_s=t3 - t2)


# ---- report ----------------------------------------------------------------------------


def _mib(x: float) -> str:
  return f"{x / 2**20:,.1f} MiB"


def table(r: dict) -> str:
  """The human-readable table of `run`'s results."""
  med = r["step_s_median"]
  rows = [
      ("config", f"{r['config']}: {r['model']}"),
      ("backend", f"{r['backend']} x{r['devices']} ({r['device_kind']}), dense_impl="
                  f"{r['dense_impl']}, attention_impl={r['attention_impl']}, "
                  f"layer_loop={r['layer_loop']}"),
      ("compile", f"{r['compile_s']:.1f} s"),
      ("step time", f"median {med:.3f} s  (min {r['step_s_min']:.3f}, max "
                    f"{r['step_s_max']:.3f}; {r['steps']} steps after {r['warmup']} warm-up)"),
      ("CPU time", f"median {r['cpu_s_median']:.3f} CPU-s/step (process time, all threads;"
                   " steadier than wall time on a shared host)"),
      ("tokens/s", f"{r['tokens_per_s']:,.0f}  ({r['tokens_per_step']:,} tokens/step)"),
      ("model FLOPs", f"{r['model_flops_per_token'] / 1e6:.2f} MFLOPs/token "
                      f"(6N + 6LTD); XLA cost analysis: "
                      f"{r['hlo_flops_per_step'] / r['tokens_per_step'] / 1e6:.2f} MFLOPs/token"
                      " (counts a scanned layer's loop body once)"),
      ("peak", f"{r['peak_flops'] / 1e9:,.1f} GFLOP/s ({r['peak_source']}; samples "
               + ", ".join(f"{p / 1e9:.0f}" for p in r["peak_flops_samples"]) + ")"),
      ("MFU", f"{100 * r['mfu']:.1f}%"),
      ("host time", f"{1e3 * r['host_s_per_step']:.1f} ms/step = "
                    f"{100 * r['host_share']:.2f}% of a step"),
  ]
  rows += _checkpoint_rows(r) + [
      ("fork", f"{r['fork_copy_bytes']:,} bytes copied, {r['fork_shared_buffers']}/"
               f"{r['state_buffers']} buffers shared, {1e6 * r['fork_s']:.0f} us; first "
               f"branch step {r['fork_first_step_s']:.3f} s, +{r['fork_first_step_extra_bytes']:,}"
               f" bytes beyond its outputs; main intact: {r['fork_main_intact']}"),
      ("memory", f"{_mib(r['peak_memory_bytes'])} ({r['peak_memory_source']}); compiled "
                 "step: " + ", ".join(f"{k} {_mib(v)}" for k, v in r["compiled_bytes"].items())),
  ] + _profile_rows(r)
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _checkpoint_rows(r: dict) -> list[tuple[str, str]]:
  if "ckpt_stall_s" not in r:
    return []
  se = "" if r["ckpt_stall_se_s"] is None else f" +- {r['ckpt_stall_se_s']:.3f}"
  return [("checkpoint", f"async save stall {r['ckpt_stall_s']:+.3f} s/save = "
                         f"{100 * r['ckpt_stall_share']:+.1f}% of a step (median of "
                         f"{len(r['ckpt_stall_all_s'])} saves, mean "
                         f"{r['ckpt_stall_mean_s']:+.3f}{se} s; save() returns in "
                         f"{1e3 * r['ckpt_save_call_s']:.0f} ms; Orbax, "
                         f"compression {r['ckpt_compression']})"),
          ("integrity", f"{_mib(r['ckpt_bytes'])} per save: SHA-256 of its files "
                        f"{1e3 * r['ckpt_checksum_s']:.0f} ms at save (background), "
                        f"check {1e3 * r['ckpt_verify_s']:.0f} ms before a restore "
                        f"(restore {1e3 * r['ckpt_restore_s']:.0f} ms)")]


def _profile_rows(r: dict) -> list[tuple[str, str]]:
  rows = []
  if "profile_ms_by_kind" in r:
    rows.append(("device time", ", ".join(f"{k} {v:.2f} ms" for k, v in
                                          r["profile_ms_by_kind"].items()) + " per step"))
  for i, op in enumerate(r.get("profile_top", [])):
    rows.append(("top ops" if i == 0 else "", f"{op['ms_per_step']:9.2f} ms/step "
                 f"{100 * op['share']:5.1f}%  {op['op'][:40]}"
                 + (f"  [{op['kernel'][:60]}]" if op["kernel"] != op["op"] else "")))
  return rows

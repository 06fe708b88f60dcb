"""Compile a config's train and eval steps for a Cloud TPU slice ahead of time, on any host.

`compile_for_slice(cfg, slice)` builds the mesh from the slice's abstract devices (libtpu's
topology description), then compiles exactly what a training run on that slice compiles:
`wsdjax.training.steps.StepCache`, the same shardings, donation and kernels (chosen for 'tpu', the
platform of the mesh's devices). It measures per chip:
  state        params + optimizer state (their shards on one chip)
  temporaries  XLA's temporary buffers of the train step
  total        arguments + outputs - donated aliases + temporaries + code, train or eval
               (eval: its own arguments and temporaries plus the optimizer state, which
               stays on the chip), whichever is larger
and per step: model FLOPs (6N + 6LTD per token, `model.flops_per_token`), the FLOPs the
compiled program does: its matmuls as XLA emitted them (`hlo.matmul_flops`) plus the
splash attention kernels' (`hlo.splash_flops`, from their shapes), recomputation
included; collective traffic by kind (`hlo.collective_bytes`); and the step-time bound:
the larger of the compute bound (the larger FLOP count at the chips' peak bf16 rate) and
the collective bound (each chip's collective bytes at its full ICI send rate), as if XLA
overlapped every transfer with compute. A real step is slower: memory-bound work,
imperfect overlap and collectives that cannot use every link are not in it. A program
that does not fit in HBM fails to compile; the report then has `error` and XLA's largest
temporaries.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import time

FIT_FRACTION = 0.9  # a config "fits" when its per-chip total is at most 90% of HBM


@dataclasses.dataclass
class Report:
  """What `compile_for_slice` measured; bytes are per chip, FLOPs and traffic per step."""
  config: str
  slice: str
  topology: str
  chips: int
  mesh: dict
  hbm_bytes: int
  state_bytes: int = 0
  temp_bytes: int = 0
  total_bytes: int = 0
  eval_total_bytes: int = 0
  host_bytes: int = 0
  model_flops: float = 0.0
  xla_flops: float = 0.0
  collective_bytes: dict = dataclasses.field(default_factory=dict)
  fsdp_minimum: dict = dataclasses.field(default_factory=dict)
  collective_ratio: float | None = None
  eval_collective_bytes: dict = dataclasses.field(default_factory=dict)
  eval_fsdp_minimum: dict = dataclasses.field(default_factory=dict)
  eval_collective_ratio: float | None = None
  compute_bound_s: float = 0.0
  collective_bound_s: float = 0.0
  step_time_bound_s: float = 0.0
  compile_s: float = 0.0
  kernels: dict = dataclasses.field(default_factory=dict)
  error: str | None = None
  largest_temporaries: list = dataclasses.field(default_factory=list)

  @property
  def fits(self) -> bool:
    return self.error is None and self.total_bytes <= FIT_FRACTION * self.hbm_bytes

  def as_dict(self) -> dict:
    return dataclasses.asdict(self) | {"fits": self.fits}


def _shard_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  import jax
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def _program_bytes(stats) -> int:
  """HBM a compiled program needs: arguments + outputs - aliased (donated) + temps + code."""
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
          + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes)


def _host_bytes(stats) -> int:
  return (stats.host_argument_size_in_bytes + stats.host_output_size_in_bytes
          - stats.host_alias_size_in_bytes + stats.host_temp_size_in_bytes)


def _kernels(model) -> dict:
  """The kernels 'auto' picked for the model's platform and its remat (what the report
  compiled)."""
  from wsdjax.model.kernels import attention, fast_dense, fused_loss, swiglu
  c = model.config
  head_dim, dtype = c.head_dim, c.compute_dtype
  import jax
  q = jax.ShapeDtypeStruct((1, c.seq_len, c.n_heads, head_dim), dtype)
  return {"attention": attention.resolve(c.attention_impl, q, c.platform) or "xla",
          "dense": fast_dense.resolve(c.dense_impl, c.platform),
          "loss": fused_loss.resolve(c.loss_impl, c.dense_impl, c.platform),
          "swiglu": swiglu.resolve(c.swiglu_impl, c.platform),
          "remat": c.remat}


def dump_flags(dump_dir: str) -> str:
  """XLA_FLAGS that make XLA write each step's buffer assignment (read on failure)."""
  return (f"--xla_dump_to={dump_dir} "
          "--xla_dump_hlo_module_re=.*(train_step|eval_step).*")


def compile_for_slice(cfg, tpu_slice, dump_dir: str | None = None) -> Report:
  """Compile `cfg`'s train and eval steps for `tpu_slice` (a `slices.Slice`); see module doc.

  `dump_dir`: where XLA was told to dump (`dump_flags`, set in XLA_FLAGS before jax first
  compiled); the largest temporaries are read from it. Raises `config.ConfigError` for a
  config that cannot run on the slice (e.g. a batch the chips do not divide).
  """
  import jax
  from wsdjax import config as config_lib
  from wsdjax.model import transformer as model_lib
  from wsdjax.schedule import plan as plan_lib
  from wsdjax.runtime import sharding
  from wsdjax.training import steps as steps_lib
  from wsdjax.runtime.tpu import fsdp, slices

  config_lib.validate(cfg, device_count=tpu_slice.chips)
  # jax's persistent compilation cache cannot hold programs compiled without a TPU client
  # (it warns on every lookup); nothing here is run, so nothing is worth caching.
  jax.config.update("jax_enable_compilation_cache", False)
  mesh = sharding.make_mesh(cfg.mesh, slices.topology_devices(tpu_slice))
  model = model_lib.build_model(cfg.model, sharding.platform_of(mesh))
  report = Report(cfg.name, tpu_slice.name, tpu_slice.topology, tpu_slice.chips,
                  dict(mesh.shape), tpu_slice.hbm_bytes)
  compiled = steps_lib.StepCache(cfg, mesh, model)
  report.kernels = _kernels(model) | {"micro_batches": compiled.micro_batches,
                                      "gather_weights": cfg.mesh.gather_weights}
  tokens = cfg.train.global_batch_size * cfg.model.seq_len
  report.model_flops = model_lib.flops_per_token(cfg.model) * tokens
  report.state_bytes = _shard_bytes(compiled.abstract)
  first = plan_lib.make_plan(cfg.schedule).segments[0]
  t0 = time.perf_counter()
  try:
    train = compiled.train(first.schedule, donate=True)
    evaluate = compiled.eval()
  except Exception as e:  # noqa: BLE001 - XLA reports running out of HBM as a runtime error
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    report.compile_s = time.perf_counter() - t0
    return _out_of_memory(report, e, dump_dir)
  report.compile_s = time.perf_counter() - t0
  _measure(report, cfg, tpu_slice, train, evaluate, compiled.abstract.opt_state)
  _against_the_minimum(report, evaluate, fsdp.minimum(
      compiled.abstract.params, dict(mesh.shape), model.config.compute_dtype,
      compiled.micro_batches, cfg.model.tie_embeddings))
  report.largest_temporaries = _largest_temporaries(dump_dir, "jit_train_step")
  return report


def _out_of_memory(report: "Report", error: Exception, dump_dir: str | None) -> "Report":
  """The report of a program that does not fit: XLA's message and the bytes it asked for."""
  from wsdjax.runtime.tpu import slices
  report.error = " ".join(str(error).split())
  needed = re.search(r"temporaries \(([\d.]+)G\)", report.error)
  report.temp_bytes = int(float(needed.group(1)) * slices.GIB) if needed else 0
  report.total_bytes = report.state_bytes + report.temp_bytes
  report.largest_temporaries = _largest_temporaries(dump_dir, "jit_train_step",
                                                    "jit_eval_step")
  return report


def _measure(report: "Report", cfg, tpu_slice, train, evaluate, opt_state) -> None:
  """Memory per chip (the train or the eval program, whichever needs more), XLA's FLOPs
  and collective bytes, and the step-time bounds they give."""
  from wsdjax.model.kernels import attention
  from wsdjax.runtime.tpu import hlo
  stats = train.memory_analysis()
  report.temp_bytes = stats.temp_size_in_bytes
  report.eval_total_bytes = _program_bytes(evaluate.memory_analysis()) + _shard_bytes(opt_state)
  report.total_bytes = max(_program_bytes(stats), report.eval_total_bytes)
  report.host_bytes = _host_bytes(stats)
  program = train.as_text()
  kernel_flops = hlo.splash_flops(program, attention.splash_block(cfg.model.seq_len),
                                  attention.SPLASH_FUSED_BACKWARD) if (
      report.kernels["attention"] == "splash") else 0.0
  report.xla_flops = (hlo.matmul_flops(program) + kernel_flops) * tpu_slice.chips
  report.collective_bytes = hlo.collective_bytes(program, tpu_slice.chips)
  flops = max(report.model_flops, report.xla_flops)
  report.compute_bound_s = flops / (tpu_slice.chips * tpu_slice.peak_flops)
  report.collective_bound_s = sum(report.collective_bytes.values()) / tpu_slice.send_bytes_per_s
  report.step_time_bound_s = max(report.compute_bound_s, report.collective_bound_s)


def _against_the_minimum(report: "Report", evaluate, minimum) -> None:
  """The eval program's traffic, and both programs' against the FSDP floor
  (`fsdp.minimum`): compiled bytes / minimum bytes."""
  from wsdjax.runtime.tpu import hlo
  report.fsdp_minimum = minimum.train
  report.collective_ratio = _ratio(report.collective_bytes, minimum.train_total)
  report.eval_collective_bytes = hlo.collective_bytes(evaluate.as_text(), report.chips)
  report.eval_fsdp_minimum = minimum.eval
  report.eval_collective_ratio = _ratio(report.eval_collective_bytes, minimum.eval_total)


def _ratio(traffic: dict, minimum: float) -> float | None:
  """Collective bytes / the minimum; None where nothing needs to move (replicated
  weights have nothing to gather)."""
  return sum(traffic.values()) / minimum if minimum > 0 else None


def _largest_temporaries(dump_dir: str | None, *modules: str) -> list[dict]:
  """XLA's largest temporaries of the first of `modules` found in the dump ([] without)."""
  from wsdjax.runtime.tpu import hlo
  for module in modules if dump_dir else ():
    found = hlo.largest_temporaries(dump_dir, module)
    if found:
      return [dataclasses.asdict(t) for t in found]
  return []


def advice(cfg, report: Report) -> str:
  """What to change so that a config that does not fit does: one line."""
  from wsdjax.runtime.tpu import slices
  over = report.total_bytes - FIT_FRACTION * report.hbm_bytes
  tips = []
  if report.kernels.get("attention") == "xla" and cfg.model.seq_len % 128 == 0:
    tips.append("--config.model.attention_impl=splash (no [T, T] scores)")
  if report.kernels.get("loss") == "plain":
    tips.append("--config.model.loss_impl=chunked (no [B, T, V] logits)")
  if cfg.model.remat == "none":  # cheapest first: 'dots' recomputes only elementwise work
    tips.append("--config.model.remat=dots (now 'none')")
  k, batch = report.kernels["micro_batches"], cfg.train.global_batch_size
  shards = report.mesh.get("data", 1) * report.mesh.get("fsdp", 1)
  more = next((m for m in range(k + 1, batch + 1)
               if batch % m == 0 and (batch // m) % shards == 0), None)
  if more and cfg.train.chip_batch_size > 0:
    tips.append(f"--config.train.chip_batch_size={batch // (more * shards)} "
                f"(now {cfg.train.chip_batch_size}: {k} micro-batches)")
  elif more:
    tips.append(f"--config.train.micro_batches={more} (now {k})")
  if cfg.mesh.gather_weights == "once_per_step":
    tips.append("--config.mesh.gather_weights=each_use (keeps one layer's weights "
                "gathered, not all)")
  if cfg.model.remat != "full":
    tips.append(f"--config.model.remat=full (now {cfg.model.remat!r}; recomputes the "
                "matmuls)")
  tips.append("a slice with more chips")
  return (f"needs {over / slices.GIB:.2f} GiB less per chip to leave 10% of HBM free; try "
          + ", or ".join(tips))


def new_dump_dir() -> str:
  """A fresh temporary directory for XLA's dump (removed by the caller)."""
  return tempfile.mkdtemp(prefix="wsdjax-aot-xla-dump-")


def quiet_libtpu_environment(tpu_slice) -> None:
  """Environment for compiling with libtpu on a host without a TPU: the CPU backend runs
  everything, libtpu is told the slice (quiets its warnings), and several processes may
  load libtpu at once (its lock file is for a host that owns TPU chips)."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", tpu_slice.name)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

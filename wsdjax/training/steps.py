"""The jitted steps: one optimizer update `(state, batch) -> (state, metrics)` and the eval
loss, and `StepCache`, which compiles them ahead of the loop for a mesh (one train step
per LR schedule and donation). The trainer runs them; `wsdjax.aot` compiles them for a TPU
slice from any host.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from wsdjax.model import transformer as model_lib
from wsdjax.training import ema as ema_lib
from wsdjax.schedule.spec import ScheduleSpec
from wsdjax import config as config_lib
from wsdjax.runtime import sharding
from wsdjax.runtime.tpu import compiler
from wsdjax.training.state import (TrainState, abstract_state, make_optimizer, optimizer_fields,
                                state_shardings)


def _loss(params, model, tokens):
  return model.apply({"params": params}, tokens[:, :-1], tokens[:, 1:])


def loss_and_grads(params, batch: jax.Array, *, model, micro_batches: int = 1,
                   micro_sharding=None, grad_sharding=None,
                   gather_once: bool = False) -> tuple[jax.Array, Any]:
  """Mean loss and its gradient over a batch of token rows [B, T+1].

  With k = micro_batches > 1 the batch is split into k micro-batches (rows i*k + j form
  micro-batch j, so each stays spread over the data devices); their losses and gradients
  are averaged in a `lax.scan`, equal to one pass over the whole batch.
  grad_sharding (the params' NamedShardings): each micro-batch's gradient is
  reduce-scattered into them and summed there. gather_once (with grad_sharding): the
  weights are cast to the compute dtype and gathered once for all micro-batches
  (`sharding.gather_for_step`) instead of before each use.
  """
  grads_of = functools.partial(_grads_each_use, params, model=model,
                               grad_sharding=grad_sharding)
  if gather_once:
    dtype = model.config.compute_dtype
    used, to_params = jax.vjp(lambda p: sharding.gather_for_step(
        p, grad_sharding, lambda path, w: model_lib.as_used(path, w, dtype)), params)
    grads_of = functools.partial(_grads_gathered, used, to_params, model=model)
  if micro_batches == 1:
    return grads_of(batch)
  b, t = batch.shape
  stack = batch.reshape(b // micro_batches, micro_batches, t).swapaxes(0, 1)
  if micro_sharding is not None:
    stack = jax.lax.with_sharding_constraint(stack, micro_sharding)

  def accumulate(carry, micro):
    loss_sum, grad_sum = carry
    loss, grads = grads_of(micro)
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  if grad_sharding is not None:
    zeros = jax.lax.with_sharding_constraint(zeros, grad_sharding)
  (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), stack)
  return loss / micro_batches, jax.tree.map(lambda g: g / micro_batches, grads)


def _grads_each_use(params, micro, *, model, grad_sharding):
  """(loss, grads) of one micro-batch, the model gathering each weight where it uses it;
  the gradient reduce-scattered into `grad_sharding` (None: wherever XLA puts it)."""
  loss, grads = jax.value_and_grad(_loss)(params, model, micro)
  if grad_sharding is not None:
    grads = jax.lax.with_sharding_constraint(grads, grad_sharding)
  return loss, grads


def _grads_gathered(used, to_params, micro, *, model):
  """(loss, grads) of one micro-batch on weights gathered for the step (`used`); the
  gradient taken back to the parameters (float32, their shardings) by `to_params`."""
  with sharding.weights_gathered():
    loss, grads = jax.value_and_grad(_loss)(used, model, micro)
  return loss, to_params(grads)[0]


def train_step(state: TrainState, batch: jax.Array, *, model, tx, schedule,
               micro_batches: int = 1, micro_sharding=None, grad_sharding=None,
               gather_once: bool = False,
               ema_decays: tuple[float, ...] = ()) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch of token rows [B, T+1].

  Args:
    state: the train state before update `state.step`.
    batch: int32 tokens; inputs are batch[:, :-1], targets batch[:, 1:].
    model, tx, schedule: the Flax model, the optax optimizer, and its LR schedule.
    micro_batches, micro_sharding, grad_sharding, gather_once: gradient accumulation and
      how the weights are gathered (see `loss_and_grads`).
    ema_decays: the decays of `state.ema`, whose shadows move towards the new params.
  Returns:
    (new state, metrics): train_loss, grad_norm, lr of this update, and `finite`.
  """
  loss, grads = loss_and_grads(state.params, batch, model=model, micro_batches=micro_batches,
                               micro_sharding=micro_sharding, grad_sharding=grad_sharding,
                               gather_once=gather_once)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"train_loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
             "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  ema = ema_lib.update(state.ema, params, state.step + 1, ema_decays)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics


def eval_step(params, batch: jax.Array, *, model) -> jax.Array:
  """Mean next-token loss (nats) of a batch of token rows [B, T+1]."""
  return _loss(params, model, batch)


def nonfinite_problem(branch: str, step: int, metrics: dict, peak_lr: float) -> str | None:
  """The one-line report of an update (`step` + 1 of `branch`) whose metrics are not
  finite, with the remedy; None when they are."""
  if bool(metrics["finite"]):
    return None
  bad = ", ".join(f"{k}={float(v)}" for k, v in metrics.items()
                  if k != "finite" and not math.isfinite(float(v)))
  return (f"train: non-finite {bad or 'update'} at {branch} step {step + 1}; nothing after "
          "the last good checkpoint was saved; rerun with a lower --config.schedule.peak_lr "
          f"(e.g. {peak_lr / 2:g}; a resume may change it) or check the data: the run "
          "resumes from that checkpoint")


class StepCache:
  """Train steps compiled ahead of time, one per (ScheduleSpec, donate, overrides).

  Compiling before the loop means a step never recompiles inside it; `compiles` counts
  how many were built (the tests assert it).
  """

  def __init__(self, cfg, mesh, model):
    self.cfg, self.mesh, self.model = cfg, mesh, model
    self.rules = sharding.rules_from_config(cfg.mesh)
    self.state_sh = state_shardings(cfg, mesh)
    self.batch_sh = sharding.batch_sharding(mesh)
    self.abstract = abstract_state(cfg, mesh)
    rows = cfg.train.global_batch_size
    self.batch_spec = jax.ShapeDtypeStruct((rows, cfg.model.seq_len + 1), jnp.int32,
                                           sharding=self.batch_sh)
    self.micro_batches = config_lib.micro_batches(
        cfg.train, mesh.shape["data"] * mesh.shape["fsdp"])
    self.compiler_options = compiler.compiler_options(sharding.platform_of(mesh))
    self._train: dict[tuple, Callable] = {}
    self._eval = None
    self.compiles = 0
    self.compile_seconds = 0.0

  def train(self, spec: ScheduleSpec, donate: bool, overrides: tuple = ()) -> Callable:
    """The compiled step of a segment's schedule `spec` (its `spec.build()`); `overrides`:
    optimizer (field, value) pairs of the decays (`train_state.decay_overrides`)."""
    key = (spec, donate, overrides)
    if key not in self._train:
      schedule = spec.build()
      tx = make_optimizer(optimizer_fields(self.cfg.optimizer, overrides), schedule)
      spread = self.mesh.size > 1  # one device: nothing to gather or reduce, the plain step
      micro_sh = jax.sharding.NamedSharding(
          self.mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), None))
      fn = functools.partial(train_step, model=self.model, tx=tx, schedule=schedule,
                             micro_batches=self.micro_batches, micro_sharding=micro_sh,
                             grad_sharding=self.state_sh.params if spread else None,
                             gather_once=(spread and self.cfg.mesh.gather_weights
                                          == "once_per_step"),
                             ema_decays=tuple(self.cfg.train.ema_decays))
      jitted = jax.jit(fn, in_shardings=(self.state_sh, self.batch_sh),
                       out_shardings=(self.state_sh, sharding.replicated(self.mesh)),
                       donate_argnums=(0,) if donate else ())
      self._train[key] = self._compile(jitted, self.abstract, self.batch_spec)
    return self._train[key]

  def eval(self) -> Callable:
    if self._eval is None:
      fn = functools.partial(eval_step, model=self.model)
      jitted = jax.jit(fn, in_shardings=(self.state_sh.params, self.batch_sh),
                       out_shardings=sharding.replicated(self.mesh))
      self._eval = self._compile(jitted, self.abstract.params, self.batch_spec)
    return self._eval

  def _compile(self, jitted, *args):
    t0 = time.perf_counter()
    with sharding.with_rules(self.mesh, self.rules):
      compiled = jitted.lower(*args).compile(compiler_options=self.compiler_options or None)
    self.compile_seconds += time.perf_counter() - t0
    self.compiles += 1
    return compiled



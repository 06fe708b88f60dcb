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

from wsdjax.training import ema as ema_lib
from wsdjax.schedule.spec import ScheduleSpec
from wsdjax.runtime import sharding
from wsdjax.training.state import (TrainState, abstract_state, make_optimizer, optimizer_fields,
                                state_shardings)


def _loss(params, model, tokens):
  return model.apply({"params": params}, tokens[:, :-1], tokens[:, 1:])


def loss_and_grads(params, batch: jax.Array, *, model, micro_batches: int = 1,
                   micro_sharding=None) -> tuple[jax.Array, Any]:
  """Mean loss and its gradient over a batch of token rows [B, T+1].

  With k = micro_batches > 1 the batch is split into k micro-batches (rows i*k + j form
  micro-batch j, so each stays spread over the data devices); their losses and gradients
  are averaged in a `lax.scan`, equal to one pass over the whole batch.
  """
  grad_fn = jax.value_and_grad(_loss)
  if micro_batches == 1:
    return grad_fn(params, model, batch)
  b, t = batch.shape
  stack = batch.reshape(b // micro_batches, micro_batches, t).swapaxes(0, 1)
  if micro_sharding is not None:
    stack = jax.lax.with_sharding_constraint(stack, micro_sharding)

  def accumulate(carry, micro):
    loss_sum, grad_sum = carry
    loss, grads = grad_fn(params, model, micro)
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), stack)
  return loss / micro_batches, jax.tree.map(lambda g: g / micro_batches, grads)


def train_step(state: TrainState, batch: jax.Array, *, model, tx, schedule,
               micro_batches: int = 1, micro_sharding=None,
               ema_decays: tuple[float, ...] = ()) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch of token rows [B, T+1].

  Args:
    state: the train state before update `state.step`.
    batch: int32 tokens; inputs are batch[:, :-1], targets batch[:, 1:].
    model, tx, schedule: the Flax model, the optax optimizer, and its LR schedule.
    micro_batches, micro_sharding: gradient accumulation (see `loss_and_grads`).
    ema_decays: the decays of `state.ema`, whose shadows move towards the new params.
  Returns:
    (new state, metrics): train_loss, grad_norm, lr of this update, and `finite`.
  """
  loss, grads = loss_and_grads(state.params, batch, model=model, micro_batches=micro_batches,
                               micro_sharding=micro_sharding)
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
      k = self.cfg.train.micro_batches
      micro_sh = jax.sharding.NamedSharding(
          self.mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), None))
      fn = functools.partial(train_step, model=self.model, tx=tx, schedule=schedule,
                             micro_batches=k, micro_sharding=micro_sh,
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
      compiled = jitted.lower(*args).compile()
    self.compile_seconds += time.perf_counter() - t0
    self.compiles += 1
    return compiled



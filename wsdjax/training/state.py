"""The train state and how it is made: the optimizer, fresh (sharded) initialisation, and
the abstract state (shapes, dtypes, shardings) that restores and ahead-of-time compiles use.

The trainer (`wsdjax.training.trainer`) and `checkpoint.restore` both build on this module; it knows
nothing of either.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wsdjax.model import transformer as model_lib
from wsdjax.schedule import builders as schedules
from wsdjax.runtime import sharding


@flax.struct.dataclass
class TrainState:
  """Everything resume needs besides the data position: step, params, optimizer state,
  and the EMA shadows of the params (`wsdjax.training.ema`; one per `train.ema_decays`, () if none)."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema: tuple = ()


# ---- optimizer ----
def weight_decay_mask(params) -> Any:
  """True for weights that get decoupled weight decay: every parameter but norm scales."""
  def keep(path, _):
    return not any(getattr(k, "key", None) == "scale" for k in path)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(opt_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  """clip_by_global_norm(grad_clip) -> AdamW(lr=schedule(count)), decay masked off norms."""
  parts = []
  if opt_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
  parts.append(optax.adamw(learning_rate=schedule, b1=opt_cfg.b1, b2=opt_cfg.b2,
                           eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay,
                           mask=weight_decay_mask))
  return optax.chain(*parts)


def decay_overrides(cfg) -> tuple[tuple[str, float], ...]:
  """The optimizer fields set for the decays (`schedule.decay_overrides`), as sorted
  (field, value) pairs; () when none is set."""
  return tuple(sorted((k, float(v)) for k, v in cfg.schedule.decay_overrides.items()
                      if v is not None))


def optimizer_fields(opt_cfg, overrides: tuple = ()):
  """`opt_cfg` with `overrides` ((field, value) pairs) applied: the decays' optimizer."""
  import ml_collections  # local: only where overrides are applied
  fields = ml_collections.ConfigDict(dict(opt_cfg.items()))
  for name, value in overrides:
    fields[name] = value
  return fields


def _any_schedule(cfg) -> optax.Schedule:
  """A schedule with the run's optimizer-state structure (all schedules share it)."""
  return schedules.constant(peak_lr=cfg.schedule.peak_lr, warmup_steps=0)


# ---- state init, directly sharded ----
def _boxed_init(cfg, tx, rng) -> TrainState:
  model = model_lib.build_model(cfg.model)
  tokens = jnp.zeros((1, cfg.model.seq_len), jnp.int32)
  boxed = model.init(rng, tokens)["params"]
  params = nn.unbox(boxed)
  shadows = tuple(boxed for _ in cfg.train.ema_decays)  # e_1 = p_1: any start will do
  return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(params),
                    ema=shadows)


def state_shardings(cfg, mesh) -> TrainState:
  """NamedShardings of the train state: params by logical axis rules, optimizer moments
  and EMA shadows like their params, scalars replicated."""
  rules = sharding.rules_from_config(cfg.mesh)
  tx = make_optimizer(cfg.optimizer, _any_schedule(cfg))
  abstract = jax.eval_shape(functools.partial(_boxed_init, cfg, tx), jax.random.key(0))
  param_sh = sharding.logical_to_shardings(abstract.params, mesh, rules)
  opt_sh = optax.tree_map_params(
      tx, lambda _, sh: sh, abstract.opt_state, param_sh,
      transform_non_params=lambda _: sharding.replicated(mesh),
      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return TrainState(step=sharding.replicated(mesh), params=param_sh, opt_state=opt_sh,
                    ema=tuple(param_sh for _ in cfg.train.ema_decays))


def abstract_state(cfg, mesh=None) -> TrainState:
  """ShapeDtypeStructs of the train state (with shardings when a mesh is given)."""
  tx = make_optimizer(cfg.optimizer, _any_schedule(cfg))
  abstract = jax.eval_shape(lambda r: nn.unbox(_boxed_init(cfg, tx, r)), jax.random.key(0))
  if mesh is None:
    return abstract
  shardings = state_shardings(cfg, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def init_state(cfg, mesh) -> TrainState:
  """Fresh train state from `cfg.seed`, created directly in its shardings."""
  tx = make_optimizer(cfg.optimizer, _any_schedule(cfg))
  shardings = state_shardings(cfg, mesh)
  init = jax.jit(lambda r: nn.unbox(_boxed_init(cfg, tx, r)), out_shardings=shardings)
  with sharding.with_rules(mesh, sharding.rules_from_config(cfg.mesh)):
    return init(jax.random.key(cfg.seed))

"""`validate(config, device_count)`: every field and cross-field rule, checked before any
compilation or write; the first problem raises `ConfigError`, whose text is one line:
`<field>: <what is wrong>; <how to fix>`."""

from __future__ import annotations

import math

from wsdjax.config.fields import (SOURCES, TOKENIZERS, base_config, flatten, micro_batches,
                                  unknown_field)
from wsdjax.runtime.errors import ConfigError
from wsdjax.runtime.errors import require as _require


def _positive_int(cfg_flat, field: str, allow_zero: bool = False) -> None:
  value = cfg_flat[field]
  ok = isinstance(value, int) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  _require(ok, field, f"must be a {'non-negative' if allow_zero else 'positive'} integer, "
           f"got {value!r}", f"set --config.{field}=<int>")


def _choice(cfg_flat, field: str, choices) -> None:
  value = cfg_flat[field]
  _require(value in choices, field, f"unknown value {value!r}",
           f"use one of {', '.join(map(str, choices))}")


def _choices_of(module: str, name: str) -> tuple:
  """The choices of a field, from the module that owns them (e.g.
  checkpoint.COMPRESSIONS)."""
  import importlib  # local: the owners import jax, which this module does not
  return tuple(getattr(importlib.import_module(f"wsdjax.{module}"), name))


def validate(cfg, device_count: int | None = None) -> None:
  """Check every field and cross-field rule; raise ConfigError on the first problem."""
  flat = flatten(cfg)
  _validate_keys(flat)
  _validate_numbers(flat)
  _require(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool)
           and 0 <= cfg.seed < 2**31, "seed", f"must be an integer in [0, 2**31), got "
           f"{cfg.seed!r}", "e.g. --config.seed=0")
  _validate_model(cfg.model)
  _validate_data(cfg.data, flat)
  _validate_train(cfg.train, flat)
  _validate_optimizer(cfg.optimizer)
  _validate_decay_overrides(cfg.schedule.decay_overrides, cfg.optimizer)
  _validate_schedule(cfg.schedule)
  _choice(flat, "checkpoint.compression", ("auto",) + _choices_of("checkpoint", "COMPRESSIONS"))
  _choice(flat, "mesh.gather_weights", _choices_of("runtime.sharding", "GATHER_WEIGHTS"))
  _positive_int(flat, "checkpoint.every")
  _positive_int(flat, "checkpoint.keep", allow_zero=True)
  _validate_mesh(cfg, device_count)


def _validate_keys(flat: dict) -> None:
  """Every key of the config is a known field (`fields.unknown_field` says why not), and
  every known field is there."""
  known = flatten(base_config())
  for field in flat:
    if field not in known:
      raise unknown_field(field) or ConfigError(
          field, "is a section of the config, not a value",
          "start configs from wsdjax.config.base_config()")
  for field in known:
    _require(field in flat, field, "missing from the config",
             "start configs from wsdjax.config.base_config()")


def _validate_numbers(flat: dict) -> None:
  """Every number in the config is finite (inf/nan are never a setting: an infinite weight
  decay or epsilon trains nothing, or NaNs)."""
  for field, value in flat.items():
    if isinstance(value, float):
      _require(math.isfinite(value), field, f"must be a finite number, got {value!r}",
               f"set --config.{field}=<number>")


def _validate_model(m) -> None:
  """The model's fields are the model's: `ModelConfig` owns their choices and rules."""
  from wsdjax.model import transformer as model_lib  # local: the owner imports jax
  model_lib.ModelConfig.from_config(m)  # raises ConfigError naming model.<field>


def _validate_data(d, flat: dict) -> None:
  _choice(flat, "data.source", SOURCES)
  _choice(flat, "data.tokenizer", TOKENIZERS)
  if d.source == "text":
    _require(bool(d.path), "data.path", "empty but data.source='text'",
             "set --config.data.path=/path/to/*.txt")
  if d.source == "tfds":
    _require(bool(d.tfds_name), "data.tfds_name", "empty but data.source='tfds'",
             "set --config.data.tfds_name=<dataset>")
  if d.source == "tokens":
    from wsdjax.data import tokens_source  # local: the owner of the rule imports numpy
    problem = tokens_source.stores_problem(d)
    if problem:
      raise ConfigError(*problem)
  else:
    _require(not d.mixture, "data.mixture", f"only the 'tokens' source reads a mixture, not "
             f"{d.source!r}", "set --config.data.source=tokens, or --config.data.mixture='()'")
  if d.tokenizer == "huggingface":
    _require(bool(d.tokenizer_path), "data.tokenizer_path", "empty but tokenizer='huggingface'",
             "set --config.data.tokenizer_path=/path/to/tokenizer.json")
  _require(0.0 < d.val_fraction < 1.0, "data.val_fraction",
           f"must be in (0, 1), got {d.val_fraction}", "e.g. 0.02")
  _require(d.bigram_alpha > 0, "data.bigram_alpha", f"must be > 0, got {d.bigram_alpha}",
           "e.g. 0.1")
  _positive_int(flat, "data.prefetch", allow_zero=True)


def _validate_train(t, flat: dict) -> None:
  for f in ("global_batch_size", "micro_batches", "log_every", "eval_batches"):
    _positive_int(flat, f"train.{f}")
  _positive_int(flat, "train.eval_every", allow_zero=True)
  _positive_int(flat, "train.chip_batch_size", allow_zero=True)
  _require(t.global_batch_size % t.micro_batches == 0, "train.micro_batches",
           f"{t.micro_batches} does not divide train.global_batch_size={t.global_batch_size}",
           "pick a divisor of the global batch")
  from wsdjax.training import ema  # local: the owner of the rule imports jax
  why = ema.problem(t.ema_decays)
  _require(why is None, "train.ema_decays", why or "",
           "e.g. --config.train.ema_decays='(0.999,)'")


def _validate_decay_overrides(d, o) -> None:
  """The decays' optimizer fields: each unset (None) or a value its field allows."""
  field = "schedule.decay_overrides."
  for name in ("b2", "weight_decay", "grad_clip"):
    value = d[name]
    _require(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
             field + name, f"must be a number or None, got {value!r}", "e.g. 0.99")
  _require(d.b2 is None or 0 <= d.b2 < 1, field + "b2", f"must be in [0, 1), got {d.b2}",
           "e.g. 0.99")
  _require(d.weight_decay is None or d.weight_decay >= 0, field + "weight_decay",
           f"must be >= 0, got {d.weight_decay}", "e.g. 0.0")
  _require(d.grad_clip is None or (d.grad_clip > 0 and o.grad_clip > 0), field + "grad_clip",
           f"must be > 0 and optimizer.grad_clip > 0, got {d.grad_clip} and {o.grad_clip}",
           "an override may change the clip but not switch it on or off")


def _validate_optimizer(o) -> None:
  _require(0 <= o.b1 < 1, "optimizer.b1", f"must be in [0, 1), got {o.b1}", "e.g. 0.9")
  _require(0 <= o.b2 < 1, "optimizer.b2", f"must be in [0, 1), got {o.b2}", "e.g. 0.95")
  _require(o.eps > 0, "optimizer.eps", f"must be > 0, got {o.eps}", "e.g. 1e-8")
  _require(o.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}",
           "e.g. 0.1")
  _require(o.grad_clip >= 0, "optimizer.grad_clip", f"must be >= 0, got {o.grad_clip}",
           "0 disables clipping")


def _validate_schedule(s) -> None:
  """The schedule's rules are the schedule room's (`plan.check`): each field, the LR
  formulas, the merges and the branch plan."""
  from wsdjax.schedule import plan  # local: plan imports jax, which this module does not
  plan.check(s)


def _validate_mesh_rules(rules) -> None:
  """Each rule is (logical axis name, a mesh axis | a tuple of them | None)."""
  from wsdjax.runtime import sharding  # local: the mesh's owner imports jax, this module does not
  fix = "e.g. ('act_batch', ('data', 'fsdp')); mesh axes: " + ", ".join(sharding.MESH_AXES)
  for rule in rules:
    _require(isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str),
             "mesh.rules", f"{rule!r} is not a (logical name, mesh axes) pair", fix)
    axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    bad = [a for a in axes if a is not None and a not in sharding.MESH_AXES]
    _require(not bad, "mesh.rules", f"rule {tuple(rule)!r} names no mesh axis {bad[0]!r}"
             if bad else "", fix)


def _validate_mesh(cfg, device_count: int | None) -> None:
  _validate_mesh_rules(cfg.mesh.rules)
  if device_count is None:
    return
  from wsdjax.runtime import sharding  # local: the mesh's owner imports jax, this module does not
  data, fsdp, tensor = sharding.mesh_shape(cfg.mesh, device_count)
  t = cfg.train
  shards = data * fsdp
  _require(t.global_batch_size % shards == 0, "train.global_batch_size",
           f"{t.global_batch_size} is not divisible by data*fsdp = {shards} devices",
           f"use a multiple of {shards}")
  if t.chip_batch_size > 0:
    rows = shards * t.chip_batch_size
    _require(t.global_batch_size % rows == 0, "train.chip_batch_size",
             f"{t.chip_batch_size} sequences on each of data*fsdp = {shards} devices "
             f"({rows} a micro-batch) do not divide train.global_batch_size="
             f"{t.global_batch_size}", "pick a chip batch that divides "
             f"{t.global_batch_size // shards} (the sequences a device gets per step)")
  micro = t.global_batch_size // micro_batches(t, shards)
  _require(micro % shards == 0, "train.micro_batches",
           f"micro-batch of {micro} sequences is not divisible by data*fsdp = {shards}",
           "use fewer micro-batches or a larger global batch")
  m = cfg.model
  _require(m.n_heads % tensor == 0, "model.n_heads",
           f"{m.n_heads} is not divisible by mesh.tensor={tensor}", "change heads or the mesh")
  _require(m.n_kv_heads % tensor == 0, "model.n_kv_heads",
           f"{m.n_kv_heads} is not divisible by mesh.tensor={tensor}",
           "change kv heads or the mesh")

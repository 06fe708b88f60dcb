"""The run config a workdir holds (config.json: `to_json`, `load_run_config`) and the rules
of a resume: which fields may change (MUTABLE_FIELDS; FUTURE_FIELDS, which act only on
updates not yet made: `future_changes`), `resume_conflicts`, and `record_run_config`.
"""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath

from wsdjax.config.fields import base_config, flatten, set_field
from wsdjax.runtime import files
from wsdjax.runtime.errors import ConfigError

RUN_CONFIG = "config.json"


def to_json(cfg) -> str:
  return json.dumps(cfg.to_dict(), indent=1, sort_keys=True, default=list)


def load_run_config(workdir) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with."""
  path = epath.Path(workdir) / RUN_CONFIG
  if not path.exists():
    raise ConfigError("workdir", f"{workdir} holds no run ({RUN_CONFIG} missing)",
                      "pass the --workdir of a run started with python -m wsdjax.train")
  try:
    raw = json.loads(path.read_text())
  except ValueError as e:
    raise ConfigError("workdir", f"{path} is not valid JSON ({e})",
                      "restore that file from a copy, or start a new --workdir") from None
  if not isinstance(raw, dict):
    raise ConfigError("workdir", f"{path} holds a {type(raw).__name__}, not a config",
                      "restore that file from a copy, or start a new --workdir")
  return _from_json_dict(raw)


def _from_json_dict(raw: dict) -> ml_collections.ConfigDict:
  cfg = base_config()
  flat = flatten(ml_collections.ConfigDict(raw))
  for field, value in flat.items():
    if field in RETIRED_FIELDS:
      continue
    if isinstance(value, list):
      value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    set_field(cfg, field, value)
  return cfg


# Fields of earlier versions that a stored run config may hold and that mean nothing now
# (the raw-array checkpoint writer and its idle-priority thread).
RETIRED_FIELDS = ("checkpoint.writer", "checkpoint.write_priority")


# Fields a resumed run may change without rewriting history.
MUTABLE_FIELDS = ("name", "train.log_every", "train.eval_every", "train.micro_batches",
                  "train.chip_batch_size", "mesh.gather_weights",
                  "checkpoint.every", "checkpoint.keep", "checkpoint.async_save",
                  "checkpoint.compression", "checkpoint.checksums",
                  "data.prefetch", "mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.rules",
                  "model.remat", "model.dense_impl", "model.attention_impl",
                  "model.layer_loop", "model.loss_impl", "model.swiglu_impl")


# Fields that act only on updates not yet made: a resumed run may change them (the
# remedy after a NaN is a lower peak LR); the change is recorded in the manifest at the
# state the run resumes from. Saved states keep the values they were trained with.
FUTURE_FIELDS = ("schedule.peak_lr", "schedule.min_lr_ratio", "schedule.decay_shape",
                 "schedule.decay_overrides.b2", "schedule.decay_overrides.weight_decay",
                 "schedule.decay_overrides.grad_clip",
                 "optimizer.b1", "optimizer.b2", "optimizer.eps", "optimizer.weight_decay",
                 "optimizer.grad_clip",
                 # the weights of a mixture of token stores (its stores may not change)
                 "data.mixture")


def future_changes(old, new) -> dict[str, list]:
  """FUTURE_FIELDS whose value differs between `old` and `new`: field -> [old, new]."""
  old_flat, new_flat = flatten(old), flatten(new)
  return {f: [old_flat.get(f), new_flat.get(f)] for f in FUTURE_FIELDS
          if old_flat.get(f) != new_flat.get(f)}


def resume_conflicts(old, new) -> list[str]:
  """Fields whose change would rewrite the history of the run in the workdir.

  Allowed: the MUTABLE_FIELDS, the FUTURE_FIELDS (see `future_changes`; of data.mixture
  only the weights), and `schedule.budgets` growing by new, later budgets.
  """
  old_flat, new_flat = flatten(old), flatten(new)
  bad = []
  for field in sorted(set(old_flat) | set(new_flat)):
    a, b = old_flat.get(field), new_flat.get(field)
    if isinstance(a, list):
      a = tuple(a)
    if isinstance(b, list):
      b = tuple(b)
    if field == "data.mixture" and [m[0] for m in a or ()] != [m[0] for m in b or ()]:
      bad.append(f"{field} stores ({[m[0] for m in a or ()]!r} -> {[m[0] for m in b or ()]!r})")
      continue
    if field in MUTABLE_FIELDS or field in FUTURE_FIELDS or a == b:
      continue
    if field == "schedule.budgets" and tuple(b[:len(a)]) == tuple(a):
      continue
    bad.append(f"{field} ({a!r} -> {b!r})")
  return bad


def record_run_config(cfg, workdir: epath.Path) -> None:
  """Write the run's config into its workdir (what resume and `branch` read back)."""
  path = workdir / RUN_CONFIG
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(path, to_json(cfg))

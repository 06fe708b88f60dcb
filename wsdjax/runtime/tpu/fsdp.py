"""The collective bytes fully sharded data parallelism needs for a config on a mesh: the
floor `wsdjax.aot` holds a compiled program's traffic against.

Per chip, per micro-batch, with g = the devices a parameter is sharded over along the
data-parallel mesh axes ('data', 'fsdp'), t = its tensor-parallel shards, and ring
algorithms ((g-1)/g of the array leaves each chip):
  all-gather      every weight, in the compute dtype, once for the forward pass and once
                  for the backward pass (size / t each); the embedding table once: its
                  lookup's backward pass needs no weights (a tied table is the LM head
                  too, so gathered twice more)
  reduce-scatter  every gradient, in the parameters' dtype (float32), into its shards
  all-reduce      the gradient shard over the r data-parallel devices that hold it whole
                  (2(r-1)/r of it): 'data' for an FSDP-sharded weight, every data-parallel
                  device for a replicated one (the norm scales)
A step does this micro_batches times. Eval: one gather of every weight per batch. A
program may beat the floor: gathering the weights once a step
(`mesh.gather_weights='once_per_step'`) or reducing gradients in bfloat16.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from wsdjax.runtime import sharding


@dataclasses.dataclass
class Minimum:
  """Bytes one chip sends: `train` per step and `eval` per batch, by collective kind."""
  train: dict
  eval: dict

  @property
  def train_total(self) -> float:
    return sum(self.train.values())

  @property
  def eval_total(self) -> float:
    return sum(self.eval.values())


def _shards(spec, mesh_shape: dict) -> tuple[int, int, int]:
  """(g: the data-parallel devices the parameter is sharded over, r: the data-parallel
  devices that hold each shard whole, t: its tensor-parallel shards)."""
  axes = [a for entry in spec for a in sharding.mesh_axes(entry)]
  g = math.prod(mesh_shape[a] for a in axes if a in sharding.BATCH_AXES)
  t = math.prod(mesh_shape[a] for a in axes if a not in sharding.BATCH_AXES)
  batch_devices = math.prod(mesh_shape.get(a, 1) for a in sharding.BATCH_AXES)
  return g, batch_devices // g, t


def minimum(abstract_params, mesh_shape: dict, compute_dtype, micro_batches: int,
            tied: bool) -> Minimum:
  """The floor (module doc) for params given as sharded ShapeDtypeStructs (the train
  state's `params`), on a mesh of `mesh_shape` ({'data': d, 'fsdp': f, 'tensor': t})."""
  compute_bytes = np.dtype(compute_dtype).itemsize
  gather = scatter = reduce = eval_gather = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    g, r, t = _shards(leaf.sharding.spec, mesh_shape)
    size = math.prod(leaf.shape) / t
    name = getattr(path[-1], "key", None)
    uses = (1 + 2 * tied) if name == "embedding" else 2
    ring = (g - 1) / g
    gather += uses * ring * size * compute_bytes
    eval_gather += (uses + 1) // 2 * ring * size * compute_bytes
    scatter += ring * size * leaf.dtype.itemsize
    reduce += 2 * (r - 1) / r * size / g * leaf.dtype.itemsize
  train = {"all-gather": micro_batches * gather, "reduce-scatter": micro_batches * scatter,
           "all-reduce": micro_batches * reduce}
  return Minimum(train=train, eval={"all-gather": eval_gather})

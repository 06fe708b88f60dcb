"""Device mesh from `config.mesh`, logical -> mesh axis rules, and NamedShardings.

The mesh has three axes, all `AxisType.Auto` (the compiler propagates shardings; jax's
default Explicit axes reject matmuls over a sharded contracting dimension):
  data    pure data parallelism (params replicated),
  fsdp    data parallelism with params / optimizer state sharded over it (ZeRO-3),
  tensor  Megatron-style tensor parallelism (heads, mlp hidden, vocab).
The model names its array dimensions logically ('embed', 'heads', 'act_batch', ...);
`config.mesh.rules` maps those names to mesh axes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wsdjax.runtime.errors import require as _require

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
UNCONSTRAINED = P.UNCONSTRAINED

Rules = tuple[tuple[str, "str | tuple[str, ...] | None"], ...]


def mesh_shape(mesh_cfg, device_count: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with a -1 axis filled by the remaining devices; ConfigError
  naming the mesh field when the sizes cannot make `device_count`."""
  sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
  names = ("mesh.data", "mesh.fsdp", "mesh.tensor")
  fills = [i for i, v in enumerate(sizes) if v == -1]
  _require(len(fills) <= 1, names[fills[-1]] if fills else "mesh", "more than one axis is -1",
           "set at most one mesh axis to -1")
  for name, v in zip(names, sizes):
    _require(isinstance(v, int) and (v == -1 or v > 0), name, f"must be -1 or >= 1, got {v!r}",
             "e.g. -1 for all remaining devices")
  fixed = 1
  for v in sizes:
    fixed *= v if v != -1 else 1
  if fills:
    _require(device_count % fixed == 0, names[fills[0]],
             f"cannot fill: {device_count} devices are not divisible by the other axes ({fixed})",
             "change the fixed mesh axes")
    sizes[fills[0]] = device_count // fixed
  product = sizes[0] * sizes[1] * sizes[2]
  _require(product == device_count, "mesh",
           f"data*fsdp*tensor = {product} but there are {device_count} devices",
           "make the product equal the device count, or set one axis to -1")
  return tuple(sizes)


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh with axes ('data', 'fsdp', 'tensor'), every axis AxisType.Auto.

  mesh_cfg: `config.mesh` (fields data, fsdp, tensor; one may be -1). devices: defaults
  to all of jax.devices(). Raises ValueError when the sizes don't multiply to the device
  count.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  try:  # Topology-aware device order (ICI rings on TPU) where jax can compute one.
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  except (TypeError, ValueError, NotImplementedError):
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def platform_of(mesh) -> str | None:
  """The platform ('cpu', 'gpu', 'tpu') of the devices of `mesh` (a Mesh, or the
  AbstractMesh that jit traces under): what its programs are compiled for, which need not
  be this host's backend (a TPU slice compiled on a CPU host). None for an empty mesh.
  jax calls NVIDIA and AMD devices 'cuda' / 'rocm'; both are 'gpu' here."""
  if mesh is None or mesh.empty:
    return None
  abstract = mesh.abstract_mesh if isinstance(mesh, Mesh) else mesh
  platform = getattr(abstract.abstract_device, "platform", None)
  return "gpu" if platform in ("cuda", "rocm") else platform


def current_platform() -> str:
  """The platform the code being traced is compiled for: that of the mesh in force
  (`jax.set_mesh`; an abstract mesh inside jit), else jax.default_backend(). The kernels'
  'auto' choices ask this when not told a platform."""
  return platform_of(jax.sharding.get_abstract_mesh()) or jax.default_backend()


def _as_axes(x: Any) -> str | tuple[str, ...] | None:
  if x is None or isinstance(x, str):
    return x
  return tuple(x)


def rules_from_config(mesh_cfg: Any) -> Rules:
  """`config.mesh.rules` as a tuple of (logical name, mesh axis | tuple of axes | None)."""
  return tuple((str(name), _as_axes(axes)) for name, axes in mesh_cfg.rules)


def mesh_axes(entry, mesh=None) -> tuple[str, ...]:
  """One PartitionSpec entry (an axis, a tuple of axes, None, UNCONSTRAINED) as a tuple of
  mesh axis names; with `mesh`, those it has (a rule may name an axis a mesh lacks)."""
  if entry is None or entry is UNCONSTRAINED:
    return ()
  axes = (entry,) if isinstance(entry, str) else tuple(entry)
  return tuple(a for a in axes if mesh is None or a in mesh.shape)


def _axes_size(mesh: Mesh, axes: str | tuple[str, ...] | None) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  missing = [a for a in axes if a not in mesh.shape]
  if missing:
    raise ValueError(f"mesh.rules map to mesh axes {missing}, but the mesh has only "
                     f"{tuple(mesh.shape)}")
  return math.prod(mesh.shape[a] for a in axes)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """spec with every dimension whose size the mapped mesh axes don't divide replicated.

  E.g. vocab 50257 over tensor=2 -> that dimension becomes None (replicated).
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = [None if axes is UNCONSTRAINED else axes for axes in entries]
  fitted = [axes if size % _axes_size(mesh, axes) == 0 else None
            for axes, size in zip(fitted, shape)]
  return P(*fitted)


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def _leaf_sharding(leaf: Any, mesh: Mesh, rules: Rules) -> NamedSharding:
  """NamedSharding of one leaf: rules applied to a box's names; P() for a plain leaf."""
  if not _is_box(leaf):
    return NamedSharding(mesh, P())
  if isinstance(leaf, nn.LogicallyPartitioned):
    return NamedSharding(mesh, param_spec(leaf.names, np.shape(leaf.value), mesh, rules))
  # nn.Partitioned: the names are already mesh axes.
  return NamedSharding(mesh, fit_spec(P(*leaf.names), np.shape(leaf.value), mesh))


def param_spec(names: Sequence[str | None], shape: Sequence[int], mesh, rules: Rules) -> P:
  """The PartitionSpec of a parameter with logical axis `names` and `shape`: the rules'
  mesh axes, a dimension they do not divide replicated (`fit_spec`)."""
  return fit_spec(nn.logical_to_mesh_axes(tuple(names), rules), shape, mesh)


def logical_to_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree of (possibly) LogicallyPartitioned leaves.

  boxed_tree: e.g. `jax.eval_shape(model.init, rng, tokens)` or the eval_shape of an
  optimizer state built from boxed params. Returns a tree with the *unboxed* structure
  (what `nn.unbox(boxed_tree)` gives) whose leaves are NamedShardings: boxed leaves use
  `rules` (dimensions not divisible by their mesh axes are replicated), plain leaves
  (step counters, ...) are replicated, P().
  """
  return jax.tree.map(lambda x: _leaf_sharding(x, mesh, rules), boxed_tree, is_leaf=_is_box)


GATHER_WEIGHTS = ("each_use", "once_per_step")
_gathered_for_the_step = contextvars.ContextVar("wsdjax_weights_gathered", default=False)


@contextlib.contextmanager
def weights_gathered() -> Iterator[None]:
  """Inside it (while tracing), `gathered` leaves a weight as it comes: the caller gathered
  every weight once for the whole step (`mesh.gather_weights='once_per_step'`)."""
  token = _gathered_for_the_step.set(True)
  try:
    yield
  finally:
    _gathered_for_the_step.reset(token)


def gathered(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`x`, a parameter (or its compute-dtype copy) with logical axis `names`, gathered over
  the data-parallel mesh axes ('data', 'fsdp') for its use, as FSDP does.

  Forward: constrained to the parameter's sharding (a cast before it happens on the
  shards, so the gather moves the cast dtype), then to that sharding without the
  data-parallel axes (tensor-parallel axes stay); inside `weights_gathered` x is left as
  it comes. Backward: the gradient is constrained to the parameter's sharding, so the
  data shards' partial sums are reduced straight into its shards (a reduce-scatter; XLA's
  TPU backend may run one as an all-reduce and a slice) and never kept whole. The values
  are x's. A no-op outside a mesh with logical rules or on one device."""
  rules = nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty or mesh.size == 1:
    return x
  sharded = param_spec(names, np.shape(x), mesh, rules)
  if _gathered_for_the_step.get():
    return _gather(x, sharded, None)
  return _gather(x, sharded, without_batch_axes(sharded))


def without_batch_axes(spec: P) -> P:
  """`spec` with the data-parallel mesh axes ('data', 'fsdp') dropped: a parameter's
  sharding once gathered for use."""
  return P(*[tuple(a for a in mesh_axes(e) if a not in BATCH_AXES) or None for e in spec])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gather(x, sharded: P, whole: P | None):
  if whole is None:
    return x
  return jax.lax.with_sharding_constraint(jax.lax.with_sharding_constraint(x, sharded), whole)


def _gather_fwd(x, sharded: P, whole: P | None):
  return _gather(x, sharded, whole), None


def _gather_bwd(sharded: P, whole: P | None, _, grad):
  del whole
  return (jax.lax.with_sharding_constraint(grad, sharded),)


_gather.defvjp(_gather_fwd, _gather_bwd)


def gather_for_step(params: Any, shardings: Any, cast: Any) -> Any:
  """Every parameter cast by `cast(path, p)` and gathered once (`once_per_step`): the
  copies the micro-batches share; their gradients come back reduce-scattered into the
  parameters' `shardings` (a tree of NamedShardings like params)."""
  def one(path, p, sh):
    return _gather(cast(path, p), sh.spec, without_batch_axes(sh.spec))
  return jax.tree_util.tree_map_with_path(one, params, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a [batch, length] token batch: batch over ('data', 'fsdp')."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated sharding (scalars, small state)."""
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def with_rules(mesh: Mesh, rules: Rules) -> Iterator[Mesh]:
  """Context with `rules` as flax's logical axis rules and `mesh` as the current mesh.

  Inside it `nn.with_logical_constraint` resolves to mesh shardings during jit tracing.
  Uses `jax.set_mesh` (jax >= 0.7; flax reads the abstract mesh it sets), else the
  legacy `with mesh:`.
  """
  set_mesh = getattr(jax, "set_mesh", None)
  mesh_ctx = set_mesh(mesh) if set_mesh is not None else mesh
  with nn.logical_axis_rules(rules), mesh_ctx:
    yield mesh

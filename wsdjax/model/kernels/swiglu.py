"""The SwiGLU gate h = silu(a) * u, with a backward pass that reads its inputs once.

    silu(a) = a s,  s = sigmoid(a)
    dh/da   = g u s (1 + a (1 - s)),   dh/du = g silu(a)     (g: the gradient of h)

XLA's autodiff computes du and da in two passes over the [B, T, F] arrays (their size and
the speed-ups below: docs/performance.md). `model.swiglu_impl`:
- 'xla': autodiff.
- 'vjp': a custom vjp that computes both gradients from one float32 expression, rounded
  once (XLA still fuses it as it likes: on an H100 as fast as 'xla').
- 'pallas': that vjp with its backward as one Pallas kernel that reads g, a, u and writes
  da, du once: faster steps for GPT-2 small on an H100. Under a device mesh it runs
  per shard (`jax.shard_map` over the hidden activations' logical sharding); where those
  axes don't divide the arrays evenly, or F allows only blocks under 128 columns on a GPU,
  the backward is the 'vjp' expression instead. Off the GPU it runs interpreted (slow:
  for tests).
- 'auto': 'pallas' on GPU while jax ships Pallas' Triton backend (deprecated in jax 0.11),
  else 'vjp' on GPU; 'xla' elsewhere.
Values are the same in every impl; gradients agree to float32 rounding (tests/unit/test_swiglu.py).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsdjax.runtime import sharding

IMPLS = ("auto", "xla", "vjp", "pallas")


def _has_pallas_triton() -> bool:
  try:
    from jax.experimental.pallas import triton  # noqa: F401
  except ImportError:
    return False
  return True


def resolve(impl: str, platform: str | None = None) -> str:
  """'xla', 'vjp' or 'pallas' for `model.swiglu_impl` = `impl` on devices of `platform`
  (None: `sharding.current_platform()`)."""
  if impl not in IMPLS:
    raise ValueError(f"model: swiglu_impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  if (platform or sharding.current_platform()) != "gpu":
    return "xla"
  return "pallas" if _has_pallas_triton() and _ampere_or_newer() else "vjp"


def _ampere_or_newer() -> bool:
  """Whether the GPUs run Pallas' Triton kernels: compute capability 8.0 or newer (a T4 or
  V100 does not). True when there is no GPU to ask (compiling for one elsewhere)."""
  try:
    capability = getattr(jax.devices("gpu")[0], "compute_capability", None)
  except RuntimeError:
    return True
  try:
    return capability is None or float(capability) >= 8.0
  except (TypeError, ValueError):
    return True


def _grads(g, a, u):
  """(da, du) in float32 math, returned in the dtypes of a and u."""
  g, a32, u32 = g.astype(jnp.float32), a.astype(jnp.float32), u.astype(jnp.float32)
  s = jax.nn.sigmoid(a32)
  da = g * u32 * s * (1.0 + a32 * (1.0 - s))
  du = g * a32 * s
  return da.astype(a.dtype), du.astype(u.dtype)


_MIN_GPU_BLOCK = (8, 128)  # smaller blocks of rows x columns run slower than XLA's passes


def blocks(m: int, f: int, on_gpu: bool) -> tuple[int, int] | None:
  """The kernel's (rows, columns) block for an [m, f] array: the largest of 8 rows and
  1024 columns that divide it; None (use XLA) where that is under 8 x 128 on a GPU."""
  bf = next(b for b in (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if f % b == 0)
  bm = next(b for b in (8, 4, 2, 1) if m % b == 0)
  if on_gpu and (bm < _MIN_GPU_BLOCK[0] or bf < _MIN_GPU_BLOCK[1]):
    return None
  return bm, bf


def _pallas_grads(g, a, u, platform=None):
  """`_grads` as one Pallas kernel over (rows, columns) blocks of the [M, F] views; XLA's
  `_grads` where the shape allows only small blocks. Interpreted off the GPU."""
  from jax.experimental import pallas as pl

  interpret = (platform or sharding.current_platform()) != "gpu"
  shape, f = a.shape, a.shape[-1]
  g2, a2, u2 = (x.reshape(-1, f) for x in (g, a, u))
  m = a2.shape[0]
  block = blocks(m, f, on_gpu=not interpret)
  if block is None:
    return _grads(g, a, u)
  bm, bf = block

  def kernel(g_ref, a_ref, u_ref, da_ref, du_ref):
    da, du = _grads(g_ref[...], a_ref[...], u_ref[...])
    da_ref[...] = da
    du_ref[...] = du

  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=4)
  spec = pl.BlockSpec((bm, bf), lambda i, j: (i, j))
  da, du = pl.pallas_call(
      kernel, grid=(m // bm, f // bf), in_specs=[spec, spec, spec], out_specs=[spec, spec],
      out_shape=[jax.ShapeDtypeStruct(a2.shape, a.dtype),
                 jax.ShapeDtypeStruct(u2.shape, u.dtype)],
      interpret=interpret, name="swiglu_bwd", **kwargs)(g2, a2, u2)
  return da.reshape(shape), du.reshape(shape)


def _per_shard(names, platform, g, a, u):
  """`_pallas_grads` on each shard (`jax.shard_map`) when a mesh of several devices is
  set and the logical axis `names` of the arrays shard them evenly; XLA's `_grads` where
  they would not (a shard_map would gather such arrays whole onto every device)."""
  kernel = functools.partial(_pallas_grads, platform=platform)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(g, a, u)
  if names is None:
    return _grads(g, a, u)
  asked = nn.logical_to_mesh_axes(names)
  spec = sharding.fit_spec(asked, a.shape, mesh)
  dropped = any(want not in (None, sharding.UNCONSTRAINED) and got is None
                for want, got in zip(asked, spec))
  if dropped or all(axes is None for axes in spec):
    return _grads(g, a, u)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec,) * 3, out_specs=(spec, spec),
                       check_vma=False)(g, a, u)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _swiglu(a, u, impl, names, platform):
  return jax.nn.silu(a) * u


def _fwd(a, u, impl, names, platform):
  return jax.nn.silu(a) * u, (a, u)


def _bwd(impl, names, platform, res, g):
  a, u = res
  if impl == "pallas":
    return _per_shard(names, platform, g, a, u)
  return _grads(g, a, u)


_swiglu.defvjp(_fwd, _bwd)


def swiglu(a: jax.Array, u: jax.Array, impl: str = "auto",
           names: tuple[str | None, ...] | None = None,
           platform: str | None = None) -> jax.Array:
  """silu(a) * u; `impl` as `model.swiglu_impl` (module doc) for devices of `platform`;
  `names`, the logical axes of a and u, shard the Pallas backward under a mesh."""
  impl = resolve(impl, platform)
  if impl == "xla":
    return jax.nn.silu(a) * u
  return _swiglu(a, u, impl, names, platform)

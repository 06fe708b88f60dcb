"""Dense layers (y = x @ W) whose weight gradient runs on XLA:CPU's fast matmul path.

XLA:CPU computes the weight gradient of a dense layer, dW = x^T g (a dot contracting the
batch*sequence dimension of both operands), about half as fast as the forward dot of the
same size (seen in profiles on Zen 3 and Zen 4; /work/shared/FACTS.md "CPU speed").
`dense` (and `dense_t`, a tied LM head x @ E^T) has a `jax.custom_vjp` whose backward
flattens x and g to 2-D and computes dW = optimization_barrier(x2d^T) @ g2d: the barrier
materialises the transpose, so XLA cannot fold it back into the dot and runs a plain
row-major matmul instead. Of x and g, the one with fewer columns is transposed (see
`_mm_t`): for the LM head that is x [B*T, D], not the logits gradient [B*T, V]. Forward
values and gradients equal those of `x @ w` up to float32 rounding.

`model.dense_impl` picks the implementation: 'xla' (plain `x @ w`, for TPU/GPU), 'cpu_dw'
(the custom vjp), or 'auto' = 'cpu_dw' when the devices compiled for are CPUs, else 'xla'.
"""

from __future__ import annotations

import jax

from wsdjax.runtime import sharding

IMPLS = ("auto", "xla", "cpu_dw")


def resolve(impl: str, platform: str | None = None) -> str:
  """'xla' or 'cpu_dw' for a `model.dense_impl` value; 'auto' looks at `platform`, the
  platform of the devices compiled for (None: `sharding.current_platform()`)."""
  if impl not in IMPLS:
    raise ValueError(f"model: dense_impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    return "cpu_dw" if (platform or sharding.current_platform()) == "cpu" else "xla"
  return impl


def _mm_t(a: jax.Array, b: jax.Array) -> jax.Array:
  """a^T @ b for 2-D a [M, K], b [M, N] as a plain row-major matmul (see module doc).

  The operand with fewer columns is the one transposed (materialised behind a barrier):
  a^T @ b when K <= N, else (b^T @ a)^T, whose final [N, K] -> [K, N] transpose is
  small (a weight, not an activation).
  """
  bar = jax.lax.optimization_barrier
  if a.shape[1] <= b.shape[1]:
    return bar(a.T) @ b
  return bar(bar(b.T) @ a).T


@jax.custom_vjp
def _dense_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
  return x @ w


def _dense_cpu_fwd(x, w):
  return x @ w, (x, w)


def _dense_cpu_bwd(res, g):
  x, w = res
  dx = g @ w.T
  dw = _mm_t(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


@jax.custom_vjp
def _dense_t_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
  return x @ w.T


def _dense_t_cpu_fwd(x, w):
  return x @ w.T, (x, w)


def _dense_t_cpu_bwd(res, g):
  x, w = res
  dx = g @ w
  dw = _mm_t(g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1]))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dense_t_cpu.defvjp(_dense_t_cpu_fwd, _dense_t_cpu_bwd)


def dense(x: jax.Array, w: jax.Array, impl: str = "auto",
          platform: str | None = None) -> jax.Array:
  """x [..., K] @ w [K, N] -> [..., N]; `impl` as `model.dense_impl` on `platform`."""
  if resolve(impl, platform) == "cpu_dw":
    return _dense_cpu(x, w)
  return x @ w


def dense_t(x: jax.Array, w: jax.Array, impl: str = "auto",
            platform: str | None = None) -> jax.Array:
  """x [..., K] @ w[N, K]^T -> [..., N] (a tied LM head: x @ E^T); as `dense`."""
  if resolve(impl, platform) == "cpu_dw":
    return _dense_t_cpu(x, w)
  return x @ w.T


def dense_nd(x: jax.Array, w: jax.Array, n_in: int, impl: str = "auto") -> jax.Array:
  """Contract the last `n_in` axes of x with the first `n_in` axes of w (an einsum such as
  'btd,dhk->bthk' or 'bthk,hkd->btd') as one 2-D dense layer."""
  k = 1
  for d in w.shape[:n_in]:
    k *= d
  out_shape = w.shape[n_in:]
  y = dense(x.reshape(*x.shape[:x.ndim - n_in], k), w.reshape(k, -1), impl)
  return y.reshape(*y.shape[:-1], *out_shape)


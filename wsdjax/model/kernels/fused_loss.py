"""LM head + cross-entropy in chunks, with the gradient computed in the same pass.

    loss = mean_{b,t} [ logsumexp_v(z_bt) - z_bt[y_bt] ],   z = x W   (W = E^T when tied)
    dloss/dz = (softmax(z) - onehot(y)) / N,   dx = dz W^T,   dW = x^T dz

The plain path materialises the logits z [B, T, V] and their gradient (128 MB each for
`configs/small.py`) and passes over them several times. `head_loss` instead scans over
chunks of the sequence axis (B x c rows at a time, c dividing T), and its forward pass
already computes dx and dW chunk by chunk (the loss is the last thing the model computes,
so its gradient is always wanted when it is differentiated); the backward pass only
scales them by the incoming cotangent. No [B, T, V] array is ever built, and each chunk's
logits stay in cache. dW uses the row-major form of `fast_dense` (x^T materialised).
Chunking the sequence axis, not the batch, keeps each chunk spread over the data devices.

Used with `model.loss_impl='chunked'`, which 'auto' picks on GPU, TPU and the CPU fast path
(`model.dense_impl` resolving to 'cpu_dw'); values and
gradients agree with `cross_entropy(x @ W, y)` to float32 rounding (tests/unit/test_fused_loss.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from wsdjax.runtime import sharding
from wsdjax.model.kernels import fast_dense

IMPLS = ("auto", "plain", "chunked")  # model.loss_impl
CHUNK_ROWS = 512  # rows (B x c) per chunk: measured best of 256..2048 on Zen 3 (perf doc).
ACCELERATOR_CHUNK_ROWS = 16384  # on GPU/TPU: 1 GB of float32 logits a chunk at V = 16k.


def resolve(loss_impl: str, dense_impl: str, platform: str | None = None) -> str:
  """'chunked' or 'plain' for `model.loss_impl` on devices of `platform` (None:
  `sharding.current_platform()`): 'auto' = 'chunked' on GPU and TPU (the [B, T, V] float32
  logits of a 32k vocabulary would take half a v5e chip's HBM) and on the CPU fast path
  (`dense_impl` resolving to 'cpu_dw'); 'plain' on CPU with XLA's dense layers."""
  if loss_impl != "auto":
    return loss_impl
  platform = platform or sharding.current_platform()
  fast_cpu = fast_dense.resolve(dense_impl, platform) == "cpu_dw"
  return "chunked" if fast_cpu or platform != "cpu" else "plain"


def default_chunk_rows(platform: str | None = None) -> int:
  """CHUNK_ROWS on CPU (chunks that stay in cache), else ACCELERATOR_CHUNK_ROWS."""
  on_cpu = (platform or sharding.current_platform()) == "cpu"
  return CHUNK_ROWS if on_cpu else ACCELERATOR_CHUNK_ROWS


def chunk_len(batch: int, seq_len: int, rows: int) -> int:
  """The largest c dividing `seq_len` with batch * c <= rows (at least 1)."""
  best = 1
  for c in range(1, seq_len + 1):
    if seq_len % c == 0 and batch * c <= rows:
      best = c
  return best


def _chunks(a: jax.Array, c: int) -> jax.Array:
  """[B, T, ...] -> [T/c, B, c, ...]: the scan runs over the first axis."""
  b, t = a.shape[:2]
  return a.reshape(b, t // c, c, *a.shape[2:]).swapaxes(0, 1)


def _unchunk(a: jax.Array) -> jax.Array:
  """Inverse of `_chunks`: [n, B, c, ...] -> [B, n*c, ...]."""
  a = a.swapaxes(0, 1)
  return a.reshape(a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:])


def _logits(xc: jax.Array, w: jax.Array, tied: bool) -> jax.Array:
  """z = xc W in float32; w is E [V, D] when tied, else W [D, V]."""
  dims = (((xc.ndim - 1,), (1 if tied else 0,)), ((), ()))
  return jax.lax.dot_general(xc, w, dims, preferred_element_type=jnp.float32)


def _lse_and_target(z: jax.Array, yc: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(exp(z - max), sum of it, per-row loss lse - z[y]) of float32 logits z [B, c, V]."""
  m = jnp.max(z, axis=-1, keepdims=True)
  e = jnp.exp(z - m)
  s = jnp.sum(e, axis=-1, keepdims=True)
  target = jnp.take_along_axis(z, yc[..., None], axis=-1)
  return e, s, (m + jnp.log(s) - target)[..., 0]


def _loss_only(x, w, y, tied, c, per_device):
  w = _gathered_head(w, tied, _batch_split(x.shape[0], per_device)[1])

  def body(total, inp):
    xc, yc = inp
    _, _, loss = _lse_and_target(_logits(xc, w, tied), yc)
    return total + jnp.sum(loss), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (_chunks(x, c), _chunks(y, c)))
  return total / y.size


def _batch_split(batch: int, per_device: bool) -> tuple[int, Any]:
  """(S, axes): the batch rows are spread over S devices along mesh `axes` (the logical
  rules' 'act_batch') under the current mesh; (1, None) without one or without
  `per_device`."""
  mesh = jax.sharding.get_abstract_mesh()
  if not per_device or mesh.empty or mesh.size == 1:
    return 1, None
  names = sharding.mesh_axes(nn.logical_to_mesh_axes(("act_batch",))[0], mesh)
  size = math.prod(mesh.shape[a] for a in names)
  return (size, names) if size > 1 and batch % size == 0 else (1, None)


def _gathered_head(w: jax.Array, tied: bool, split_axes) -> jax.Array:
  """w gathered over the batch axes once, before the scan (else every chunk all-gathers an
  FSDP-sharded head again); a 'vocab' sharding (tensor parallelism) is kept."""
  if split_axes is None:
    return w
  vocab = nn.logical_to_mesh_axes(("vocab",))[0]
  return jax.lax.with_sharding_constraint(w, P(vocab, None) if tied else P(None, vocab))


def _loss_and_grads(x, w, y, tied, c, per_device):
  """(mean loss, dloss/dx, dloss/dw) in one scan over chunks.

  With `per_device` and the batch rows spread over S > 1 devices, each device sums x^T dz
  over its own rows (a [S, D, V] carry, one slice per device) and the S partial sums are
  added once after the scan: one reduction of dW per step instead of one per chunk.
  """
  d, v = x.shape[-1], w.shape[0] if tied else w.shape[1]
  bar = jax.lax.optimization_barrier
  split, axes = _batch_split(x.shape[0], per_device)
  w = _gathered_head(w, tied, axes)

  def partial_dw(xc, dz):
    if split == 1:  # x^T dz as a row-major matmul (module doc)
      return (bar(xc.reshape(-1, d).T) @ dz.reshape(-1, v)).astype(jnp.float32)[None]
    xs = xc.reshape(split, -1, d)
    zs = dz.reshape(split, -1, v)
    part = jnp.einsum("srd,srv->sdv", xs, zs, preferred_element_type=jnp.float32)
    return jax.lax.with_sharding_constraint(part, P(axes, None, None))

  def body(carry, inp):
    total, dw_parts = carry  # dw_parts: x^T dz summed over chunks, per device [S, D, V]
    xc, yc = inp
    z = _logits(xc, w, tied)
    e, s, loss = _lse_and_target(z, yc)
    dz = e / s - jax.nn.one_hot(yc, v, dtype=jnp.float32)  # sum-loss gradient, [B, c, V]
    dz = dz.astype(w.dtype)
    dxc = dz @ w if tied else dz @ w.T
    return (total + jnp.sum(loss), dw_parts + partial_dw(xc, dz)), dxc.astype(x.dtype)

  zeros = jnp.zeros((split, d, v), jnp.float32)
  if axes is not None:
    zeros = jax.lax.with_sharding_constraint(zeros, P(axes, None, None))
  init = (jnp.zeros((), jnp.float32), zeros)
  (total, dw_parts), dx = jax.lax.scan(body, init, (_chunks(x, c), _chunks(y, c)))
  n = y.size
  dw_t = jnp.sum(dw_parts, axis=0)
  dw = (dw_t.T if tied else dw_t) / n
  return total / n, _unchunk(dx) / n, dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _head_loss(x, w, y, tied, c, per_device):
  return _loss_only(x, w, y, tied, c, per_device)


def _head_loss_fwd(x, w, y, tied, c, per_device):
  loss, dx, dw = _loss_and_grads(x, w, y, tied, c, per_device)
  return loss, (dx, dw, y)


def _head_loss_bwd(tied, c, per_device, res, g):
  dx, dw, y = res
  zero_y = jnp.zeros(y.shape, jax.dtypes.float0)  # integer targets have no cotangent
  return (dx * g).astype(dx.dtype), (dw * g).astype(dw.dtype), zero_y


_head_loss.defvjp(_head_loss_fwd, _head_loss_bwd)


def head_loss(x: jax.Array, w: jax.Array, targets: jax.Array, tied: bool,
              chunk_rows: int | None = None, platform: str | None = None) -> jax.Array:
  """Mean cross-entropy (nats) of the logits x W against `targets`, without building them.

  x: [B, T, D]; w: the embedding E [V, D] when `tied` (z = x E^T), else W [D, V];
  targets: int [B, T]; chunk_rows: rows per chunk (default `default_chunk_rows(platform)`).
  Differentiable in x and w. On GPU/TPU (`platform`; None = `sharding.current_platform()`)
  under a mesh that spreads the batch, dW is summed per device and reduced once
  (`_loss_and_grads`); on CPU it is reduced per chunk, as it always was (the same bits).
  """
  b, t = targets.shape
  c = chunk_len(b, t, chunk_rows or default_chunk_rows(platform))
  per_device = (platform or sharding.current_platform()) != "cpu"
  return _head_loss(x, w, targets.astype(jnp.int32), tied, c, per_device)

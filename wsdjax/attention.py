"""Causal self-attention: jax's `dot_product_attention`, or a query-blocked form for CPU.

    out = softmax(q k^T / sqrt(Dh) + causal mask) v,   q [B, T, H, Dh], k, v [B, T, K, Dh]

`query_blocked` computes the same thing with the queries split into blocks of `block`
positions: block i (positions i*c .. (i+1)*c - 1) only reads keys 0 .. (i+1)*c - 1, so the
masked upper triangle is mostly skipped (about (1 + 1/n)/2 of the full score matrix is
computed, n = T / c), and it works head-major ([B, K, G, T, Dh], G = H / K query heads per
kv head), the layout in which XLA:CPU's batched matmuls run fastest. On a 2-core Zen 3 the
forward + backward of one layer of `configs/small.py` (B 16, T 256, H 4, Dh 64) takes
about 100 ms this way against 172 ms through `jax.nn.dot_product_attention`
(docs/performance.md). Values and gradients agree with it to float32 rounding
(tests/test_attention.py).

`model.attention_impl`: 'auto' = 'blocked' on CPU; on GPU, cuDNN's flash attention
('cudnn') for bfloat16/float16 inputs with a head dim that is a multiple of 8 up to 128
(XLA's if cuDNN refuses the call while tracing); otherwise jax's own default (None), which
is XLA's attention. XLA's builds the [B, H, T, T] scores: at GPT-2's shape (B 128, T 1024,
12 heads) 3.2 GB a layer in bfloat16, kept for the backward pass. 'xla' / 'cudnn' are passed
to `jax.nn.dot_product_attention(implementation=...)`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "cudnn", "blocked")
_MASKED = -1e30  # a finite "minus infinity": exp underflows to 0, no inf - inf = nan.


_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_fits(q: jax.Array) -> bool:
  """Whether cuDNN's flash attention takes queries like `q` [B, T, H, Dh] on any GPU it
  supports: half-precision inputs, Dh a multiple of 8 and at most 128."""
  dh = q.shape[-1]
  return q.dtype in _CUDNN_DTYPES and dh % 8 == 0 and dh <= 128


def resolve(impl: str | None, q: jax.Array | None = None) -> str | None:
  """'blocked', or the `implementation` argument of jax.nn.dot_product_attention, for
  `model.attention_impl` = `impl` and queries like `q` (module doc)."""
  if impl is not None and impl not in IMPLS:
    raise ValueError(f"model: attention_impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    backend = jax.default_backend()
    if backend == "cpu":
      return "blocked"
    if backend == "gpu" and q is not None and cudnn_fits(q):
      return "cudnn"
    return None
  return impl


BLOCK = 64  # query positions per block: measured best of 32..256 for T = 256 (perf doc).


def default_block(seq_len: int, target: int | None = None) -> int:
  """The largest divisor of `seq_len` that is at most `target` (default BLOCK)."""
  for c in range(min(target or BLOCK, seq_len), 0, -1):
    if seq_len % c == 0:
      return c
  return seq_len


def query_blocked(q: jax.Array, k: jax.Array, v: jax.Array, block: int | None = None) -> jax.Array:
  """Causal attention with query blocks of `block` positions (module doc); shapes as
  `causal_attention`. Scores and softmax are computed in float32."""
  b, t, h, dh = q.shape
  kv = k.shape[2]
  block = block or default_block(t)
  if t % block:
    raise ValueError(f"attention: block {block} must divide the sequence length {t}")
  # Head-major: [B, K, G, T, Dh] for queries, [B, K, T, Dh] for keys and values.
  qh = q.reshape(b, t, kv, h // kv, dh).transpose(0, 2, 3, 1, 4)
  kh = k.transpose(0, 2, 1, 3)
  vh = v.transpose(0, 2, 1, 3)
  scale = 1.0 / math.sqrt(dh)
  outs = []
  for start in range(0, t, block):
    end = start + block
    s = jnp.einsum("bkgqd,bkcd->bkgqc", qh[:, :, :, start:end], kh[:, :, :end],
                   preferred_element_type=jnp.float32) * scale
    causal = (jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :])
    p = jax.nn.softmax(jnp.where(causal, s, _MASKED), axis=-1)
    outs.append(jnp.einsum("bkgqc,bkcd->bkgqd", p.astype(v.dtype), vh[:, :, :end]))
  out = jnp.concatenate(outs, axis=3)  # [B, K, G, T, Dh]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     implementation: str | None = "auto") -> jax.Array:
  """softmax(q k^T / sqrt(Dh) + causal mask) v; q: [B, T, H, Dh], k, v: [B, T, K, Dh].

  Grouped-query attention: query head h reads kv head h // (H/K).
  """
  impl = resolve(implementation, q)
  if impl == "blocked":
    return query_blocked(q, k, v)
  if impl == "cudnn" and implementation == "auto":
    try:  # cuDNN checks its version, the GPU and the shapes while tracing
      return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    except (NotImplementedError, RuntimeError, ValueError):
      impl = None
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)

"""Causal self-attention: jax's `dot_product_attention`, a query-blocked form for CPU, and
the Pallas splash (flash) attention kernel for TPU.

    out = softmax(q k^T / sqrt(Dh) + causal mask) v,   q [B, T, H, Dh], k, v [B, T, K, Dh]

(grouped-query: query head h reads kv head h // (H/K)). Every implementation computes this.

`query_blocked` computes the same thing with the queries split into blocks of `block`
positions: block i (positions i*c .. (i+1)*c - 1) only reads keys 0 .. (i+1)*c - 1, so the
masked upper triangle is mostly skipped (about (1 + 1/n)/2 of the full score matrix is
computed, n = T / c), and it works head-major ([B, K, G, T, Dh], G = H / K query heads per
kv head), the layout in which XLA:CPU's batched matmuls run fastest; on CPU it is faster
than `jax.nn.dot_product_attention` (measured in docs/performance.md). Values and
gradients agree with it to float32 rounding (tests/unit/test_attention.py).

`splash_attention` runs jax's Pallas TPU splash-attention kernel
(jax.experimental.pallas.ops.tpu.splash_attention): flash attention with a causal block
mask, so fully masked key blocks are skipped and the [T, T] scores are never stored
(memory O(T) per head instead of O(T^2)); forward and backward are Pallas kernels. It runs
per device: under a mesh (`jax.set_mesh`, e.g. `wsdjax.runtime.sharding.with_rules`) it is a
`jax.shard_map` with batch sharded over the mesh axes the logical rules in force give
'act_batch' and heads over those of 'act_heads' / 'act_kv_heads' (module `_local_specs`).
Off TPU it runs in Pallas interpret mode (slow; for tests). What the kernel takes
(`splash_fits`): T a multiple of 128 (its blocks, min(512, T) or the largest multiple of
128 that divides T, must be multiples of 128 lanes), q, k, v of one dtype, H a multiple of
K. Head dims 64 and 128 compile for TPU (tests/unit/test_tpu_attention.py: ahead of time for a
v5e topology; not yet run on a TPU); values and gradients are checked in interpret mode.

`model.attention_impl` ('auto' per platform of the devices the step is compiled for: the
`platform` argument, else the platform of the mesh in force, else jax.default_backend()):
  cpu  'blocked';
  gpu  cuDNN's flash attention ('cudnn') for bfloat16/float16 inputs with a head dim that is
       a multiple of 8 up to 128 (XLA's if cuDNN refuses the call while tracing);
  tpu  'splash' where `splash_fits`;
otherwise jax's own default (None), which is XLA's attention. XLA's builds the [B, H, T, T]
scores: at GPT-2's shape (B 128, T 1024, 12 heads) 3.2 GB a layer in bfloat16, kept for the
backward pass. 'xla' / 'cudnn' are passed to `jax.nn.dot_product_attention(implementation=...)`.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from wsdjax.runtime import sharding

IMPLS = ("auto", "xla", "cudnn", "blocked", "splash")
MASKED = -1e30  # a finite "minus infinity": exp underflows to 0, no inf - inf = nan.


_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_fits(q: jax.Array) -> bool:
  """Whether cuDNN's flash attention takes queries like `q` [B, T, H, Dh] on any GPU it
  supports: half-precision inputs, Dh a multiple of 8 and at most 128."""
  dh = q.shape[-1]
  return q.dtype in _CUDNN_DTYPES and dh % 8 == 0 and dh <= 128


def resolve(impl: str | None, q: jax.Array | None = None,
            platform: str | None = None) -> str | None:
  """'blocked', 'splash', or the `implementation` argument of jax.nn.dot_product_attention,
  for `model.attention_impl` = `impl`, queries like `q` and devices of `platform`
  ('cpu' / 'gpu' / 'tpu'; None = `sharding.current_platform()`) (module doc)."""
  if impl is not None and impl not in IMPLS:
    raise ValueError(f"model: attention_impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    backend = platform or sharding.current_platform()
    if backend == "cpu":
      return "blocked"
    if backend == "gpu" and q is not None and cudnn_fits(q):
      return "cudnn"
    if backend == "tpu" and q is not None and splash_fits(q):
      return "splash"
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
    p = jax.nn.softmax(jnp.where(causal, s, MASKED), axis=-1)
    outs.append(jnp.einsum("bkgqc,bkcd->bkgqd", p.astype(v.dtype), vh[:, :, :end]))
  out = jnp.concatenate(outs, axis=3)  # [B, K, G, T, Dh]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


# ---- splash attention (Pallas, TPU) -------------------------------------------------------

SPLASH_LANES = 128  # the kernel's blocks of q and kv positions are multiples of 128 lanes
SPLASH_BLOCK = 512  # target block: jax's splash benchmarks and MaxText use 512


def splash_block(seq_len: int, target: int = SPLASH_BLOCK) -> int:
  """The largest multiple of 128 that divides `seq_len` and is at most `target` (or 128);
  raises ValueError unless `seq_len` is a multiple of 128."""
  if seq_len % SPLASH_LANES:
    raise ValueError(f"attention: splash attention needs the sequence length to be a "
                     f"multiple of {SPLASH_LANES}, got {seq_len}")
  for c in range(min(target, seq_len) // SPLASH_LANES * SPLASH_LANES, 0, -SPLASH_LANES):
    if seq_len % c == 0:
      return c
  return SPLASH_LANES


def splash_fits(q: jax.Array, k: jax.Array | None = None) -> bool:
  """Whether the splash kernel takes queries like `q` [B, T, H, Dh] (and keys `k`): T a
  multiple of 128, a float dtype; with `k`, the same dtype and head dim and H % K == 0."""
  if q.ndim != 4 or q.shape[1] % SPLASH_LANES or not jnp.issubdtype(q.dtype, jnp.floating):
    return False
  if k is not None:
    return (k.dtype == q.dtype and k.shape[-1] == q.shape[-1] and k.shape[1] == q.shape[1]
            and q.shape[2] % k.shape[2] == 0)
  return True


# The name (jax.ad_checkpoint.checkpoint_name) of the kernel's forward residuals (its output
# and log-sum-exp): a remat policy that saves them (model.REMAT_POLICIES 'dots') keeps the
# backward from running the forward kernel again.
SPLASH_RESIDUALS = "splash_residuals"
# One backward kernel that computes dq with dk and dv (5 matmuls per score block) rather
# than a dq kernel and a dk/dv kernel that each recompute the scores (3 + 4).
SPLASH_FUSED_BACKWARD = True


def _splash_kernel(heads: int, seq_len: int, block: int, interpret: bool):
  """The splash kernel for one sequence: q [heads, T, Dh], k, v [kv_heads, T, Dh] -> [heads,
  T, Dh]; causal mask, blocks of `block` q and kv positions in the forward and the backward
  kernel (fused: SPLASH_FUSED_BACKWARD). Not cached: it holds arrays made in the trace that
  builds it (jax caches the numpy processing of the block mask)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  c = block
  dq = {} if SPLASH_FUSED_BACKWARD else {"block_q_dq": c, "block_kv_dq": c}
  blocks = sk.BlockSizes(block_q=c, block_kv=c, block_kv_compute=c, block_q_dkv=c,
                         block_kv_dkv=c, block_kv_dkv_compute=c,
                         use_fused_bwd_kernel=SPLASH_FUSED_BACKWARD, **dq)
  mask = sm.MultiHeadMask([sm.CausalMask((seq_len, seq_len)) for _ in range(heads)])
  return sk.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                            interpret=interpret, residual_checkpoint_name=SPLASH_RESIDUALS)


def _splash_local(q: jax.Array, k: jax.Array, v: jax.Array, *, block: int,
                  interpret: bool) -> jax.Array:
  """splash attention on one device's arrays, shapes as `causal_attention`."""
  b, t, h, dh = q.shape
  kernel = _splash_kernel(h, t, block, interpret)
  # The kernel does not scale: fold 1/sqrt(Dh) into q (in float32, one rounding).
  q = (q.astype(jnp.float32) * (1.0 / math.sqrt(dh))).astype(q.dtype)
  head_major = lambda x: x.transpose(0, 2, 1, 3)  # [B, T, H, Dh] -> [B, H, T, Dh]
  out = jax.vmap(kernel)(head_major(q), head_major(k), head_major(v))
  return out.transpose(0, 2, 1, 3)


def _local_specs(mesh, q_shape, kv_shape, axes: frozenset) -> tuple[P, P]:
  """shard_map specs (of q and the output, of k and v) from the logical rules in force:
  batch over the mesh axes of 'act_batch' (those whose sizes divide B, in order), heads over
  those of 'act_heads' where they are the same as those of 'act_kv_heads' and divide both
  H and K (so each shard keeps whole groups of query heads with their kv head); else
  replicated. The sequence and head dim are not sharded (the kernel takes whole
  sequences). Only the mesh axes in `axes` are used; a rule naming an axis the mesh lacks
  is ignored. With no rules in force everything is replicated (each device computes it
  all)."""
  q_rule = nn.logical_to_mesh_axes(("act_batch", "act_length", "act_heads", None))
  kv_rule = nn.logical_to_mesh_axes(("act_batch", "act_length", "act_kv_heads", None))
  size = lambda names: math.prod(mesh.shape[a] for a in names)
  batch = ()
  for a in sharding.mesh_axes(q_rule[0], mesh):  # the batch axes whose sizes divide B
    if a in axes and q_shape[0] % (size(batch) * mesh.shape[a]) == 0:
      batch += (a,)
  usable = lambda entry: tuple(a for a in sharding.mesh_axes(entry, mesh)  # noqa: E731
                               if a in axes and a not in batch)
  heads, kv_heads = usable(q_rule[2]), usable(kv_rule[2])
  if heads != kv_heads or q_shape[2] % size(heads) or kv_shape[2] % size(heads):
    heads = ()
  entry = lambda names: (names[0] if len(names) == 1 else names) if names else None
  q_spec = P(entry(batch), None, entry(heads), None)
  return q_spec, q_spec


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                     block: int | None = None, interpret: bool | None = None,
                     mesh=None) -> jax.Array:
  """Causal attention by the Pallas splash kernel (module doc); shapes as `causal_attention`.

  Runs per device under `mesh` (default: the mesh in force, `jax.set_mesh`) as a
  jax.shard_map, its specs from the logical axis rules in force (`_local_specs`); with no
  mesh or a one-device mesh it calls the kernel directly. `block`: q and kv positions per
  kernel block, a multiple of 128 that divides T (default `splash_block(T)`).
  `interpret`: Pallas interpret mode; None = when the devices are not TPUs (the mesh's,
  else jax.default_backend()), so CPU tests run the same code. Needs `splash_fits(q, k)`;
  raises ValueError otherwise. shard_map runs with check_vma=False: the kernel's
  pallas_calls declare no varying-axes types.
  """
  if not splash_fits(q, k) or v.shape != k.shape or v.dtype != k.dtype:
    raise ValueError(f"attention: splash attention takes q [B, T, H, Dh] and k, v [B, T, K, "
                     f"Dh] of one float dtype with T a multiple of {SPLASH_LANES} and H a "
                     f"multiple of K; got q {q.shape} {q.dtype}, k {k.shape} {k.dtype}, "
                     f"v {v.shape} {v.dtype}")
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  if interpret is None:
    interpret = (sharding.platform_of(mesh) or jax.default_backend()) != "tpu"
  t = q.shape[1]
  block = block or splash_block(t)
  if block % SPLASH_LANES or t % block:
    raise ValueError(f"attention: the splash block {block} must be a multiple of "
                     f"{SPLASH_LANES} that divides the sequence length {t}")
  local = functools.partial(_splash_local, block=block, interpret=bool(interpret))
  manual = set(getattr(mesh, "manual_axes", ()))
  axes = frozenset(a for a in mesh.axis_names if a not in manual) if not mesh.empty else ()
  if mesh.empty or math.prod(mesh.shape[a] for a in axes) == 1:
    return local(q, k, v)  # inside a shard_map over every axis, or a single device
  q_spec, kv_spec = _local_specs(mesh, q.shape, k.shape, axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec),
                       out_specs=q_spec, axis_names=axes, check_vma=False)(q, k, v)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     implementation: str | None = "auto",
                     platform: str | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(Dh) + causal mask) v; q: [B, T, H, Dh], k, v: [B, T, K, Dh].

  Grouped-query attention: query head h reads kv head h // (H/K). `platform`: of the
  devices the step is compiled for ('cpu' / 'gpu' / 'tpu'; None =
  `sharding.current_platform()`),
  for 'auto' and for whether 'splash' runs the kernel compiled or interpreted.
  """
  impl = resolve(implementation, q, platform)
  if impl == "blocked":
    return query_blocked(q, k, v)
  if impl == "splash":
    if implementation == "auto" and not splash_fits(q, k):
      impl = None
    else:
      interpret = None if platform is None else platform != "tpu"
      return splash_attention(q, k, v, interpret=interpret)
  if impl == "cudnn" and implementation == "auto":
    try:  # cuDNN checks its version, the GPU and the shapes while tracing
      return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    except (NotImplementedError, RuntimeError, ValueError):
      impl = None
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)

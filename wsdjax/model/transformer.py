"""Decoder-only transformer (Flax linen) with logical axis names on every array.

Architecture (pre-norm, LLaMA-style, no biases):

  h_0 = Embed(tokens)                                    [B, T, D]
  for each of L blocks:
    h = h + Attn(RMSNorm(h))       causal, RoPE, grouped-query (K kv heads)
    h = h + SwiGLU(RMSNorm(h))     W_down (silu(h W_gate) * (h W_up))
  logits = RMSNorm(h) @ W_head     W_head = Embed^T when tied   [B, T, V], float32

Parameters are float32; activations are computed in `ModelConfig.dtype`. Each parameter is
created through `nn.with_logical_partitioning` and each large activation passes through
`nn.with_logical_constraint`, so `wsdjax.runtime.sharding` maps both onto a device mesh with the
logical -> mesh rules of `config.mesh.rules`; each weight reaches its matmul cast to the
compute dtype and gathered over the data-parallel axes (`sharding.gathered`, FSDP). Norm
parameters are all named `scale` (the only parameters that weight decay skips).

Parameter tree (scan_layers=True puts a leading 'layers' axis of size L on every block
parameter and stores them under `layers`; unrolled blocks are `block_0` ... `block_{L-1}`):

  embed/embedding     [V, D]        ('vocab', 'embed')
  layers/attn_norm/scale   [D]      ('norm',)
  layers/attn/query   [D, H, Dh]    ('embed', 'heads', 'head_dim')
  layers/attn/key     [D, K, Dh]    ('embed', 'kv_heads', 'head_dim')
  layers/attn/value   [D, K, Dh]    ('embed', 'kv_heads', 'head_dim')
  layers/attn/out     [H, Dh, D]    ('heads', 'head_dim', 'embed')
  layers/mlp_norm/scale    [D]      ('norm',)
  layers/mlp/gate     [D, F]        ('embed', 'mlp')
  layers/mlp/up       [D, F]        ('embed', 'mlp')
  layers/mlp/down     [F, D]        ('mlp', 'embed')
  final_norm/scale    [D]           ('norm',)
  lm_head             [D, V]        ('embed', 'vocab')      (only when not tied)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsdjax.model import decoding
from wsdjax.runtime import sharding
from wsdjax.runtime.errors import ConfigError
from wsdjax.model.kernels import attention, fast_dense, fused_loss, swiglu

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# model.remat: what each block keeps for the backward pass (the rest is recomputed).
def _keep_attention_residuals(policy):
  """`policy`, also keeping the splash attention kernel's named residuals (its output and
  log-sum-exp, small beside the scores), so the backward does not rerun its forward."""
  names = jax.checkpoint_policies.save_only_these_names(attention.SPLASH_RESIDUALS)

  def keep(prim, *args, **params):
    return names(prim, *args, **params) or policy(prim, *args, **params)
  return keep


REMAT_POLICIES = {
    "none": None,   # keep everything autodiff saves (no recompute)
    "full": None,   # keep only the block's input; recompute the whole block
    # keep the outputs of the weight matmuls (projections, MLP) and of the attention
    # kernel; recompute the rest (norms, rotary embeddings, the SwiGLU gate)
    "dots": lambda: _keep_attention_residuals(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    # the same, the matmul outputs moved to host memory during the forward pass and fetched
    # back for the backward (TPU/GPU hosts with pinned memory)
    "dots_offload": lambda: _keep_attention_residuals(
        jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")),
}
_REMAT = tuple(REMAT_POLICIES)
LAYER_LOOPS = ("scan", "unrolled")
_RMS_EPS = 1e-6
PLATFORMS = (None, "cpu", "gpu", "tpu")

# Logical names of activations (mapped to mesh axes by config.mesh.rules).
RESIDUAL = ("act_batch", "act_length", "act_embed")
HEADS = ("act_batch", "act_length", "act_heads", None)
KV_HEADS = ("act_batch", "act_length", "act_kv_heads", None)
MLP_HIDDEN = ("act_batch", "act_length", "act_mlp")
LOGITS = ("act_batch", "act_length", "act_vocab")
# Logical names of the weights used in more than one place.
Q_NAMES = ("embed", "heads", "head_dim")
KV_NAMES = ("embed", "kv_heads", "head_dim")
OUT_NAMES = ("heads", "head_dim", "embed")
IN_NAMES, OUT_MLP_NAMES = ("embed", "mlp"), ("mlp", "embed")
EMBED_NAMES, HEAD_NAMES = ("vocab", "embed"), ("embed", "vocab")


def _check(ok: bool, field: str, problem: str, fix: str) -> None:
  if not ok:
    raise ConfigError(f"model.{field}", problem, fix)


# The values each choice field of ModelConfig takes (attention_impl None: jax's default).
CHOICES = {"dtype": tuple(_DTYPES), "remat": _REMAT, "layer_loop": LAYER_LOOPS,
           "dense_impl": fast_dense.IMPLS, "attention_impl": (*attention.IMPLS, None),
           "loss_impl": fused_loss.IMPLS, "swiglu_impl": swiglu.IMPLS, "platform": PLATFORMS}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Model sizes and numerics: the fields of `config.model`, their defaults (which
  `config.base_config()` lists with their meanings) and their rules (`__post_init__`).

  `attention_impl` (`wsdjax.model.kernels.attention`): 'auto' = 'blocked' (query-blocked causal
  attention, faster on XLA:CPU) on CPU, cuDNN flash attention on GPU where it applies, the
  Pallas splash (flash) kernel on TPU ('splash', per device under the mesh), XLA's
  elsewhere; None, 'xla' or 'cudnn' go to `jax.nn.dot_product_attention(implementation=...)`
  ('cudnn': cuDNN flash attention on NVIDIA GPUs, needs dtype bfloat16).
  `loss_impl`, for the loss of a call with targets: 'plain' builds the float32 logits
  [B, T, V] and takes `cross_entropy`; 'chunked' runs `fused_loss.head_loss` (sequence
  chunks, the gradient in the same pass, no logits built); 'auto' = 'chunked' on GPU, TPU
  and the CPU fast path (`fused_loss.resolve`), else 'plain'.
  `remat` (REMAT_POLICIES): what each block keeps for the backward pass: 'none' all,
  'dots' the weight matmuls' outputs, 'dots_offload' those in host memory, 'full' only the
  block's input (the rest is recomputed).
  `dense_impl` picks the dense-layer matmuls (`wsdjax.model.kernels.fast_dense`): 'xla' plain dots,
  'cpu_dw' a custom vjp with a faster weight gradient on XLA:CPU, 'auto' = 'cpu_dw' on
  CPU and 'xla' elsewhere. Values and gradients agree to float32 rounding.
  `swiglu_impl` picks the SwiGLU gate's backward (`wsdjax.model.kernels.swiglu`): 'xla' autodiff, 'vjp'
  one float32 expression, 'pallas' one Pallas kernel (per shard under a mesh), 'auto' =
  'pallas' on GPU, 'xla' elsewhere.
  `platform` ('cpu', 'gpu', 'tpu'; None = `sharding.current_platform()`) is the platform of the
  devices the model is compiled for: every 'auto' above decides by it, so a TPU program
  compiled on a CPU host gets the TPU kernels. It is not a config field: `build_model`
  sets it (the trainer passes its mesh's platform, `sharding.platform_of`).
  `layer_loop` (with scan_layers, the stacked 'layers' parameters): 'scan' runs the
  blocks in a `lax.scan` (one compiled body: fast compiles at any depth); 'unrolled' in a
  Python loop over the slices of the same parameters, which on XLA:CPU avoids the scan's
  stacked per-layer activation buffers (faster steps without huge pages, within noise
  with them: docs/performance.md; the checkpoint layout is unchanged).
  """

  n_layers: int = 2
  d_model: int = 128
  n_heads: int = 4
  n_kv_heads: int = 4
  d_ff: int = 512
  vocab_size: int = 256
  seq_len: int = 128
  tie_embeddings: bool = True
  rope_theta: float = 10000.0
  dtype: str = "float32"
  scan_layers: bool = True
  layer_loop: str = "scan"
  remat: str = "none"
  init_std: float = 0.02
  attention_impl: str | None = "auto"
  dense_impl: str = "auto"
  loss_impl: str = "auto"
  swiglu_impl: str = "auto"
  platform: str | None = None

  def __post_init__(self):
    """The model's field rules, the one place they live (config validation asks them):
    positive sizes, heads that divide d_model and are divided by the kv heads, an even
    head dim (RoPE), a known dtype, remat policy, layer loop and kernel, positive finite
    rope_theta and init_std. Raises ConfigError naming `model.<field>`."""
    for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size",
                 "seq_len"):
      value = getattr(self, name)
      _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, name,
             f"must be a positive integer, got {value!r}", f"set --config.model.{name}=<int>")
    _check(self.d_model % self.n_heads == 0, "d_model", f"{self.d_model} is not divisible by "
           f"model.n_heads={self.n_heads}", "pick d_model a multiple of n_heads")
    _check(self.n_heads % self.n_kv_heads == 0, "n_kv_heads", f"{self.n_kv_heads} does not "
           f"divide model.n_heads={self.n_heads}",
           "use a divisor of n_heads (equal for plain multi-head attention)")
    _check(self.head_dim % 2 == 0, "d_model", f"head dim {self.head_dim} is odd; rotary "
           "embeddings need an even head dim", "change d_model or n_heads")
    for name, choices in CHOICES.items():
      value = getattr(self, name)
      _check(value in choices, name, f"unknown value {value!r}",
             f"use one of {', '.join(map(str, choices))}")
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    for name in ("rope_theta", "init_std"):
      value = getattr(self, name)
      _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name,
             f"must be a positive finite number, got {value!r}", f"e.g. {defaults[name]}")

  @classmethod
  def from_config(cls, cfg: Any) -> ModelConfig:
    """Builds from `config.model` (a ConfigDict or mapping); unknown fields are an error."""
    if isinstance(cfg, ModelConfig):
      return cfg
    values = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(f"model.{unknown[0]}", "unknown field of the model",
                        f"known fields: {', '.join(sorted(known))}")
    return cls(**values)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(_DTYPES[self.dtype])


def _param(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple[str, ...],
           init: Any) -> jax.Array:
  """A float32 parameter carrying logical axis `names`."""
  return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


def _gathered(w: jax.Array, names: tuple[str, ...], dtype) -> jax.Array:
  """Weight `w` (logical axes `names`) cast to the compute dtype, then gathered over the
  data-parallel mesh axes for its use (`sharding.gathered`): FSDP moves the weight in
  `dtype`, and its gradient comes back reduce-scattered. The cast is the one the layer
  did before, so the values are unchanged."""
  return sharding.gathered(w.astype(dtype), names)


def as_used(path, param: jax.Array, dtype) -> jax.Array:
  """Parameter `param` (at tree `path`) as the layers use it: matrices cast to the compute
  `dtype`; norm scales and the embedding table (its rows are looked up in float32, then
  cast) as they are. Casting again inside a layer is then a no-op: the same values."""
  name = getattr(path[-1], "key", None) if path else None
  return param if name in ("scale", "embedding") else param.astype(dtype)


# ---- layers ----------------------------------------------------------------------------


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2, -1) + eps) * scale, computed in float32, returned in `dtype`."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = _param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + _RMS_EPS)
    return (y * scale).astype(self.dtype)


def rope(x: jax.Array, theta: float, offset: jax.Array | None = None) -> jax.Array:
  """Rotary position embedding of x: [B, T, N, Dh] (positions 0..T-1, or offset..offset+T-1
  when decoding with a cache), "rotate half" form.

  With f_i = theta^(-2i/Dh), i < Dh/2, and (x1, x2) the two halves of the last axis:
  rope(x)_t = (x1 cos(t f) - x2 sin(t f), x2 cos(t f) + x1 sin(t f)).
  Angles are computed in float32; the result has x's dtype.
  """
  t, dh = x.shape[1], x.shape[-1]
  freqs = theta ** (-jnp.arange(0, dh // 2, dtype=jnp.float32) * 2.0 / dh)
  positions = jnp.arange(t, dtype=jnp.float32)
  if offset is not None:
    positions = positions + offset
  angles = positions[:, None] * freqs[None, :]  # [T, Dh/2]
  cos = jnp.cos(angles)[None, :, None, :]
  sin = jnp.sin(angles)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


causal_attention = attention.causal_attention


class Attention(nn.Module):
  """Causal multi-head / grouped-query self-attention with RoPE, no biases. With `decode`,
  keys and values go to a cache and the new positions attend to it (wsdjax/model/decoding.py)."""

  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    d, h, kv, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    init = nn.initializers.normal(cfg.init_std)
    dt = cfg.compute_dtype
    wq = _gathered(_param(self, "query", (d, h, dh), Q_NAMES, init), Q_NAMES, dt)
    wk = _gathered(_param(self, "key", (d, kv, dh), KV_NAMES, init), KV_NAMES, dt)
    wv = _gathered(_param(self, "value", (d, kv, dh), KV_NAMES, init), KV_NAMES, dt)
    wo = _gathered(_param(self, "out", (h, dh, d), OUT_NAMES, init), OUT_NAMES, dt)
    impl = fast_dense.resolve(cfg.dense_impl, cfg.platform)

    if impl == "xla":
      q = jnp.einsum("btd,dhk->bthk", x, wq)
      k = jnp.einsum("btd,dhk->bthk", x, wk)
      v = jnp.einsum("btd,dhk->bthk", x, wv)
    else:
      q = fast_dense.dense_nd(x, wq, 1, impl)
      k = fast_dense.dense_nd(x, wk, 1, impl)
      v = fast_dense.dense_nd(x, wv, 1, impl)
    cache = decoding.KVCache(self, k.shape, cfg.seq_len, dt) if self.decode else None
    offset = None if cache is None else cache.index.value
    q = nn.with_logical_constraint(rope(q, cfg.rope_theta, offset), HEADS)
    k = nn.with_logical_constraint(rope(k, cfg.rope_theta, offset), KV_HEADS)
    v = nn.with_logical_constraint(v, KV_HEADS)
    o = (causal_attention(q, k, v, cfg.attention_impl, cfg.platform) if cache is None
         else cache.attend(q, k, v))
    o = nn.with_logical_constraint(o, HEADS)
    if impl == "xla":
      return jnp.einsum("bthk,hkd->btd", o, wo)
    return fast_dense.dense_nd(o, wo, 2, impl)


class MLP(nn.Module):
  """SwiGLU: down(silu(x W_gate) * (x W_up)), hidden width d_ff, no biases."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    d, f, dt = cfg.d_model, cfg.d_ff, cfg.compute_dtype
    init = nn.initializers.normal(cfg.init_std)
    w_gate = _gathered(_param(self, "gate", (d, f), IN_NAMES, init), IN_NAMES, dt)
    w_up = _gathered(_param(self, "up", (d, f), IN_NAMES, init), IN_NAMES, dt)
    w_down = _gathered(_param(self, "down", (f, d), OUT_MLP_NAMES, init), OUT_MLP_NAMES, dt)
    mm = lambda a, w: fast_dense.dense(a, w, cfg.dense_impl, cfg.platform)  # noqa: E731
    gate = nn.with_logical_constraint(mm(x, w_gate), MLP_HIDDEN)
    up = nn.with_logical_constraint(mm(x, w_up), MLP_HIDDEN)
    hidden = swiglu.swiglu(gate, up, cfg.swiglu_impl, MLP_HIDDEN, cfg.platform)
    hidden = nn.with_logical_constraint(hidden, MLP_HIDDEN)
    return mm(hidden, w_down)


class Embed(nn.Module):
  """Token embedding table E: [V, D]; lookup E[tokens] (a tied LM head reads E too)."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embedding = _param(self, "embedding", (cfg.vocab_size, cfg.d_model), EMBED_NAMES,
                            nn.initializers.normal(cfg.init_std))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    # Gather the table over 'embed' (fsdp) before the lookup, as FSDP does for any weight;
    # otherwise the lookup's output is sharded on D and must be resharded to the batch.
    # The rows are looked up in float32 and then cast (XLA gathers the table cast).
    table = sharding.gathered(self.embedding, EMBED_NAMES)
    return jnp.take(table, tokens, axis=0).astype(self.config.compute_dtype)


class Block(nn.Module):
  """Pre-norm residual block: h += Attn(norm(h)); h += MLP(norm(h)).

  Signature `(h, _) -> (h, None)` so that the same module can be nn.scan'ned.
  """

  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
    cfg = self.config
    dt = cfg.compute_dtype
    x = x + Attention(cfg, self.decode, name="attn")(RMSNorm(dt, name="attn_norm")(x))
    x = nn.with_logical_constraint(x, RESIDUAL)
    x = x + MLP(cfg, name="mlp")(RMSNorm(dt, name="mlp_norm")(x))
    x = nn.with_logical_constraint(x, RESIDUAL)
    return x, None


def _block_class(cfg: ModelConfig) -> type[nn.Module]:
  """Block, wrapped in nn.remat with the policy of `cfg.remat` (REMAT_POLICIES)."""
  if cfg.remat == "none":
    return Block
  policy = REMAT_POLICIES[cfg.remat]
  # prevent_cse is only needed outside scan (scan already stops CSE across steps).
  return nn.remat(Block, prevent_cse=not cfg.scan_layers,
                  policy=policy() if policy is not None else None)


class Transformer(nn.Module):
  """Decoder-only LM: tokens int32[B, T] -> logits float32[B, T, V] (T any length).

  Called with `targets` int32[B, T], it returns the mean next-token loss (nats) instead,
  `cross_entropy(logits, targets)`; with `loss_impl` 'chunked' (by default on GPU and on the
  CPU fast path) through `fused_loss.head_loss`, which never builds the logits. With
  `decode`, a KV cache (collection 'cache') makes each call continue the previous ones.
  """

  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, targets: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    dt = cfg.compute_dtype
    embed = Embed(cfg, name="embed")
    x = nn.with_logical_constraint(embed(tokens), RESIDUAL)

    block = _block_class(cfg)
    if (cfg.scan_layers and cfg.layer_loop == "unrolled" and not self.is_initializing()
        and not self.decode):
      # The stacked parameters of `layers`, one slice per block, in a Python loop.
      layers = nn.unbox(self.variables["params"]["layers"])
      for i in range(cfg.n_layers):
        params_i = jax.tree.map(lambda p, i=i: p[i], layers)
        x, _ = block(cfg).apply({"params": params_i}, x, None)
    elif cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True}, length=cfg.n_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, self.decode, name="layers")(x, None)
    else:
      for i in range(cfg.n_layers):
        x, _ = block(cfg, self.decode, name=f"block_{i}")(x, None)

    x = RMSNorm(dt, name="final_norm")(x)
    if cfg.tie_embeddings:
      head = _gathered(embed.embedding, EMBED_NAMES, dt)  # [V, D]: logits = x E^T
    else:
      head = _gathered(_param(self, "lm_head", (cfg.d_model, cfg.vocab_size), HEAD_NAMES,
                              nn.initializers.normal(cfg.init_std)), HEAD_NAMES, dt)
    loss_impl = fused_loss.resolve(cfg.loss_impl, cfg.dense_impl, cfg.platform)
    if targets is not None and loss_impl == "chunked":
      return fused_loss.head_loss(x, head, targets, tied=cfg.tie_embeddings,
                                  platform=cfg.platform)
    if cfg.tie_embeddings:
      logits = fast_dense.dense_t(x, head, cfg.dense_impl, cfg.platform)
    else:
      logits = fast_dense.dense(x, head, cfg.dense_impl, cfg.platform)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32), LOGITS)
    if targets is not None:
      return cross_entropy(logits, targets)
    return logits


# ---- public helpers --------------------------------------------------------------------


def build_model(model_cfg: ModelConfig | Any, platform: str | None = None) -> Transformer:
  """The Transformer for `model_cfg` (a ModelConfig or `config.model`), its kernels chosen
  for devices of `platform` ('cpu' / 'gpu' / 'tpu'; None: the mesh in force's, else
  jax.default_backend())."""
  cfg = ModelConfig.from_config(model_cfg)
  if platform is not None:
    cfg = dataclasses.replace(cfg, platform=platform)
  return Transformer(cfg)


def param_count(model_cfg: ModelConfig | Any, include_embedding: bool = True) -> int:
  """Number of parameters, from the config alone (equals the size of the real tree).

  Per block: attention D·Dh·(2H + 2K) + SwiGLU 3·D·F + two norms 2·D; plus the final
  norm D. With include_embedding, add the token embedding V·D and, when untied, the LM
  head D·V. Without it, neither is counted ("non-embedding" parameters).
  """
  c = ModelConfig.from_config(model_cfg)
  d, dh = c.d_model, c.head_dim
  attn = d * dh * (2 * c.n_heads + 2 * c.n_kv_heads)
  block = attn + 3 * d * c.d_ff + 2 * d
  n = c.n_layers * block + d
  if include_embedding:
    n += c.vocab_size * d * (1 if c.tie_embeddings else 2)
  return n


def flops_per_token(model_cfg: ModelConfig | Any) -> float:
  """Training FLOPs per token (forward + backward): 6·N + 6·L·T·D.

  N = non-embedding params + LM head params V·D (the head is a matmul even when tied to
  the embedding; the embedding lookup itself is free). 6·L·T·D counts the attention
  score and value matmuls (q·k^T and p·v, 2·2·T·D per token per layer forward, times 3
  for backward) halved for causal masking: half of PaLM's 12·L·T·D. T = seq_len.
  The one formula for MFU in metrics and benchmarks.
  """
  c = ModelConfig.from_config(model_cfg)
  n = param_count(c, include_embedding=False) + c.vocab_size * c.d_model
  return float(6 * n + 6 * c.n_layers * c.seq_len * c.d_model)


def _si(x: float) -> str:
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.2f}{unit}"
  return f"{x:.0f}"


def describe(model_cfg: ModelConfig | Any) -> str:
  """One line: shape of the model, params, non-embedding params, training FLOPs/token."""
  c = ModelConfig.from_config(model_cfg)
  kv = "" if c.n_kv_heads == c.n_heads else f" ({c.n_kv_heads} kv)"
  return (f"Transformer L={c.n_layers} D={c.d_model} H={c.n_heads}{kv} F={c.d_ff} "
          f"V={c.vocab_size} T={c.seq_len} {c.dtype}"
          f"{' tied' if c.tie_embeddings else ' untied'}: "
          f"{_si(param_count(c))} params, {_si(param_count(c, include_embedding=False))} "
          f"non-embedding, {_si(flops_per_token(c))}FLOPs/token")


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-token loss in nats: mean over positions of logsumexp(z) - z[target].

  logits: [..., V] (any float dtype; computed in float32), targets: int [...].
  """
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - target_logit[..., 0])

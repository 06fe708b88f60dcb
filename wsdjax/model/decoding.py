"""Incremental decoding with a KV cache: `Transformer(cfg, decode=True)` keeps, per attention
layer, the keys and values of every position seen so far (collection 'cache'), so that each
call runs only the new tokens; `Decoder` prefills a prompt in one call, then samples one
token per jitted step (fixed shapes: a cache of model.seq_len positions, batch 1).

Cache of one attention layer: key, value [B, S, K, Dh] (S = seq_len, compute dtype) and
`index`, the positions filled. A call with t new tokens puts RoPE at positions
index..index+t-1, writes their keys and values there, and lets new token i attend to
positions 0..index+i (causal); then index += t.

Context longer than seq_len: the cache slides. When it is full, the context is cut to its
last seq_len // 2 tokens and prefilled again (one full window per seq_len // 2 new tokens),
positions restarting at 0 as in training rows. Up to seq_len tokens of prompt plus output,
the tokens equal those of the window path `wsdjax.analysis.sampling.generate` (same seed); past it they
differ, that path sliding by one token each step (a full window per token).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from wsdjax.model.kernels.attention import MASKED


def cached_attention(q: jax.Array, key: jax.Array, value: jax.Array,
                     start: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(Dh)) v over the cache, query i (of t) seeing positions 0..start+i.

  q: [B, t, H, Dh]; key, value: [B, S, K, Dh] (query head h reads kv head h // (H/K)).
  Computed in float32; the result has q's dtype.
  """
  b, t, h, dh = q.shape
  s, kv = key.shape[1], key.shape[2]
  qg = q.reshape(b, t, kv, h // kv, dh).astype(jnp.float32)
  scores = jnp.einsum("btkgd,bskd->bkgts", qg, key.astype(jnp.float32)) / math.sqrt(dh)
  visible = jnp.arange(s)[None, :] <= start + jnp.arange(t)[:, None]  # [t, S]
  probs = jax.nn.softmax(jnp.where(visible, scores, MASKED), axis=-1)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, value.astype(jnp.float32))
  return out.reshape(b, t, h, dh).astype(q.dtype)


class KVCache:
  """The 'cache' variables of one attention module, made inside its compact `__call__`."""

  def __init__(self, module, kv_shape: tuple[int, ...], seq_len: int, dtype):
    b, _, kv, dh = kv_shape
    shape = (b, seq_len, kv, dh)
    self.key = module.variable("cache", "key", jnp.zeros, shape, dtype)
    self.value = module.variable("cache", "value", jnp.zeros, shape, dtype)
    self.index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Write k, v [B, t, K, Dh] at the cache index, advance it by t, attend q to the cache."""
    start = self.index.value
    at = (0, start, 0, 0)
    for var, new in ((self.key, k), (self.value, v)):
      var.value = jax.lax.dynamic_update_slice(var.value, new.astype(var.value.dtype), at)
    self.index.value = start + q.shape[1]
    return cached_attention(q, self.key.value, self.value.value, start)


def choose(logits: jax.Array, key: jax.Array, temperature: jax.Array,
           top_k: jax.Array) -> jax.Array:
  """The next token of logits [V]: argmax when temperature == 0, else a draw from
  softmax(logits / temperature) restricted to the top_k largest logits (all when 0)."""
  v = logits.shape[-1]
  kth = jnp.sort(logits)[v - jnp.clip(top_k, 1, v)]  # the top_k-th largest
  kept = jnp.where((top_k > 0) & (logits < kth), -jnp.inf, logits)
  draw = jax.random.categorical(key, kept / jnp.maximum(temperature, 1e-6))
  return jnp.where(temperature > 0, draw, jnp.argmax(logits)).astype(jnp.int32)


class Decoder:
  """Cached generation for a Transformer: one compiled prefill (a padded window of
  seq_len tokens) and one compiled single-token step, whatever the prompt or length."""

  def __init__(self, model):
    cfg = dataclasses.replace(model.config, remat="none")  # nothing to recompute: no grads
    self.model = model.clone(config=cfg, decode=True)
    self.seq_len = cfg.seq_len
    self._prefill = jax.jit(self._prefill_fn)
    self._step = jax.jit(self._step_fn, donate_argnums=(1,))

  @functools.cached_property
  def _cache_shapes(self):
    tokens = jnp.zeros((1, self.seq_len), jnp.int32)
    return jax.eval_shape(self.model.init, jax.random.key(0), tokens)["cache"]

  def _prefill_fn(self, params, tokens, length, key, temperature, top_k):
    """Fill a fresh cache from tokens [1, S] (the first `length` real); sample one token."""
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._cache_shapes)
    logits, out = self.model.apply({"params": params, "cache": cache}, tokens,
                                   mutable=["cache"])
    cache = jax.tree_util.tree_map_with_path(  # the padding is overwritten as we go
        lambda path, x: jnp.full_like(x, length) if path[-1].key == "index" else x,
        out["cache"])
    key, sub = jax.random.split(key)
    return choose(logits[0, length - 1], sub, temperature, top_k), key, cache

  def _step_fn(self, params, cache, token, key, temperature, top_k):
    """Feed `token` at the cache index; sample the next one."""
    logits, out = self.model.apply({"params": params, "cache": cache},
                                   token.reshape(1, 1), mutable=["cache"])
    key, sub = jax.random.split(key)
    return choose(logits[0, -1], sub, temperature, top_k), key, out["cache"]

  def prefill(self, params, context: list[int], key, temperature, top_k):
    """(token, key, cache) after the last seq_len tokens of `context` (non-empty)."""
    ctx = context[-self.seq_len:]
    window = np.zeros((1, self.seq_len), np.int32)
    window[0, :len(ctx)] = ctx
    return self._prefill(params, window, np.int32(len(ctx)), key, temperature, top_k)

  def generate(self, params, prompt_ids: list[int], max_new_tokens: int,
               temperature: float = 0.8, top_k: int = 0, seed: int = 0) -> list[int]:
    """The ids of `prompt_ids` (non-empty) followed by `max_new_tokens` sampled ones."""
    ids = [int(i) for i in prompt_ids]
    if not ids:
      raise ValueError("prompt_ids: empty; give at least one token (e.g. the eos id)")
    if max_new_tokens < 1:
      return ids
    t, k = np.float32(temperature), np.int32(top_k)
    token, key, cache = self.prefill(params, ids, jax.random.key(seed), t, k)
    filled, new = min(len(ids), self.seq_len), [token]
    for _ in range(max_new_tokens - 1):
      if filled == self.seq_len:  # full: slide to the last seq_len // 2 tokens
        ids, new = ids + [int(x) for x in np.asarray(jnp.stack(new))], []
        ctx = ids[-max(1, self.seq_len // 2):]
        token, key, cache = self.prefill(params, ctx, key, t, k)
        filled = len(ctx)
      else:
        token, key, cache = self._step(params, cache, token, key, t, k)
        filled += 1
      new.append(token)
    return ids + [int(x) for x in np.asarray(jnp.stack(new))]

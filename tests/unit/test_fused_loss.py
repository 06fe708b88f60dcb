"""Tests of wsdjax.model.kernels.fused_loss: the chunked LM head + cross-entropy equals
cross_entropy(x @ W, y) in value and gradients, tied or not, in one chunk or many; and the
model's loss (targets given) is the same on the CPU fast path and the plain one."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsdjax.model.kernels import fused_loss as F
from wsdjax.model import transformer as M


def _rand(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_chunk_len():
  assert F.chunk_len(16, 256, F.CHUNK_ROWS) == 32  # 16 x 32 = 512 rows
  assert F.chunk_len(2, 12, rows=6) == 3
  assert F.chunk_len(64, 10, rows=8) == 1  # more rows than the budget: one position
  assert F.chunk_len(1, 7, rows=100) == 7


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("rows", [6, 512])  # 4 chunks of 3 positions; one chunk
def test_head_loss_equals_cross_entropy_of_logits(tied, rows):
  b, t, d, v = 2, 12, 8, 50
  x = _rand(0, b, t, d)
  w = _rand(1, v, d, scale=0.5) if tied else _rand(1, d, v, scale=0.5)
  y = np.random.default_rng(2).integers(0, v, (b, t)).astype(np.int32)
  plain = lambda x, w: M.cross_entropy(x @ (w.T if tied else w), y)
  fused = lambda x, w: F.head_loss(x, w, y, tied=tied, chunk_rows=rows)
  (l_f, g_f), (l_p, g_p) = jax.jit(lambda: (jax.value_and_grad(fused, (0, 1))(x, w),
                                            jax.value_and_grad(plain, (0, 1))(x, w)))()
  np.testing.assert_allclose(l_f, l_p, rtol=1e-6)
  for a, b_ in zip(g_f, g_p):
    np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-7)
  # Without a gradient (evaluation) the loss-only scan gives the same value.
  np.testing.assert_allclose(jax.jit(fused)(x, w), l_p, rtol=1e-6)
  # A cotangent other than 1 scales both gradients (e.g. a loss weight or a mean of losses).
  g2 = jax.grad(lambda x, w: 3.0 * fused(x, w), (0, 1))(x, w)
  for a, b_ in zip(g2, g_p):
    np.testing.assert_allclose(a, 3.0 * b_, rtol=1e-5, atol=1e-7)


def test_head_loss_large_logits_stay_finite():
  x = _rand(0, 1, 4, 4, scale=100.0)
  w = _rand(1, 16, 4, scale=100.0)
  y = np.zeros((1, 4), np.int32)
  loss, grads = jax.value_and_grad(lambda x, w: F.head_loss(x, w, y, tied=True), (0, 1))(x, w)
  assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads)
  np.testing.assert_allclose(loss, M.cross_entropy(x @ w.T, y), rtol=1e-5)


def test_model_loss_fast_path_equals_plain_path():
  """The CPU fast path (fused head, blocked attention, unrolled loop over stacked blocks)
  against the plain one (logits + cross_entropy, jax attention, scan): same parameter tree,
  loss and gradients; tied head here, an untied one sharded in tests/unit/test_sharding.py."""
  with pytest.raises(ValueError, match="layer_loop: unknown value"):
    M.ModelConfig(layer_loop="vmap")
  base = M.ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64,
                       vocab_size=48, seq_len=16, tie_embeddings=True)
  fast = dataclasses.replace(base, dense_impl="cpu_dw", attention_impl="blocked",
                             layer_loop="unrolled")
  plain = dataclasses.replace(base, dense_impl="xla", attention_impl="xla", layer_loop="scan")
  toks = np.random.default_rng(1).integers(0, 48, (4, 17)).astype(np.int32)
  params = nn.unbox(jax.jit(M.build_model(plain).init)(jax.random.key(0), toks[:, :-1]))["params"]
  # layer_loop='unrolled' keeps the stacked 'layers' tree of the scan (same checkpoints).
  shapes = lambda cfg: jax.eval_shape(M.build_model(cfg).init, jax.random.key(0), toks[:, :-1])
  assert jax.tree.structure(shapes(fast)) == jax.tree.structure(shapes(plain))
  assert "layers" in params and "block_0" not in params

  def loss_and_grads(cfg):
    model = M.build_model(cfg)
    return jax.value_and_grad(
        lambda p: model.apply({"params": p}, toks[:, :-1], toks[:, 1:]))(params)

  (l_fast, g_fast), (l_plain, g_plain) = jax.jit(
      lambda: (loss_and_grads(fast), loss_and_grads(plain)))()
  logits = jax.jit(M.build_model(plain).apply)({"params": params}, toks[:, :-1])
  np.testing.assert_allclose(l_plain, M.cross_entropy(logits, toks[:, 1:]), rtol=1e-6)
  np.testing.assert_allclose(l_fast, l_plain, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loss_impl_chunked_off_the_cpu_path_equals_plain(dtype):
  """`loss_impl='chunked'` with plain dots (the GPU/TPU path, here on CPU) against
  'plain': same loss and gradients, in float32 and in bfloat16 compute; 'auto' there is
  'plain'. bfloat16 rounds the two paths' intermediate products differently."""
  with pytest.raises(ValueError, match="loss_impl: unknown value"):
    M.ModelConfig(loss_impl="fused")
  base = M.ModelConfig(n_layers=1, d_model=32, n_heads=4, d_ff=64, vocab_size=40,
                       seq_len=16, dtype=dtype, dense_impl="xla", attention_impl="xla")
  toks = np.random.default_rng(2).integers(0, 40, (4, 17)).astype(np.int32)
  params = nn.unbox(jax.jit(M.build_model(base).init)(jax.random.key(3), toks[:, :-1]))["params"]

  def loss_and_grads(cfg):
    model = M.build_model(cfg)
    return jax.value_and_grad(
        lambda p: model.apply({"params": p}, toks[:, :-1], toks[:, 1:]))(params)

  chunked = dataclasses.replace(base, loss_impl="chunked")
  (l_auto, _), (l_plain, g_plain), (l_chunk, g_chunk) = jax.jit(lambda: (
      loss_and_grads(base), loss_and_grads(dataclasses.replace(base, loss_impl="plain")),
      loss_and_grads(chunked)))()
  assert l_auto == l_plain
  tol = dict(rtol=1e-5, atol=1e-7) if dtype == "float32" else dict(rtol=2e-2, atol=2e-3)
  np.testing.assert_allclose(l_chunk, l_plain, **tol)
  for a, b in zip(jax.tree.leaves(g_chunk), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, **tol)
  # Several chunks on an accelerator-sized default: B x c <= 16384 rows is one chunk here.
  assert F.chunk_len(4, 16, F.ACCELERATOR_CHUNK_ROWS) == 16


def test_loss_impl_auto_is_chunked_on_accelerators(monkeypatch):
  """'auto' takes the chunked loss on GPU and TPU (no [B, T, V] logits: 10 GB less at GPT-2
  small's batch on an H100, docs/performance.md; 7.8 GiB a v5e chip for paper_0.1b), decided
  by the platform the model is built for, not the host's backend; plain on CPU with XLA's
  dense layers."""
  cfg = M.ModelConfig(n_layers=1, d_model=16, n_heads=2, n_kv_heads=2, d_ff=32, vocab_size=24,
                      seq_len=8, dense_impl="xla", attention_impl="xla")
  toks = jnp.zeros((2, 8), jnp.int32)
  params = jax.jit(M.build_model(cfg).init)(jax.random.key(0), toks)
  calls = []
  monkeypatch.setattr(F, "head_loss", lambda *a, **k: calls.append(1) or jnp.float32(0))
  for platform, chunked in (("gpu", True), ("tpu", True), ("cpu", False)):
    calls.clear()
    # A new function each time, so jit traces again (the kernel is chosen when traced).
    jax.jit(lambda p, t: M.build_model(cfg, platform).apply(p, t, t))(params, toks)
    assert bool(calls) == chunked, platform


@pytest.mark.parametrize("tied", [True, False])
def test_head_loss_under_a_batch_sharded_mesh_reduces_dw_once(tied):
  """Batch over 4 x 2 devices (data x fsdp, the head FSDP-sharded), as compiled for an
  accelerator: the same loss and gradients as one device, and dW is all-reduced once a
  step, not once a chunk (per-device partial sums carried through the scan,
  `fused_loss._batch_split`). On CPU the per-chunk form is kept (bitwise as before)."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from wsdjax import config as config_lib
  from wsdjax.runtime import sharding
  from wsdjax.runtime.tpu import hlo

  b, t, d, v = 8, 32, 16, 64
  x = _rand(0, b, t, d)
  w = _rand(1, v, d, scale=0.5) if tied else _rand(1, d, v, scale=0.5)
  y = np.random.default_rng(2).integers(0, v, (b, t)).astype(np.int32)
  rows = 16  # 16 rows = 2 positions of 8 sequences: 16 chunks
  fused = lambda x, w: F.head_loss(x, w, y, tied=tied, chunk_rows=rows,  # noqa: E731
                                   platform="tpu")
  l_ref, g_ref = jax.jit(jax.value_and_grad(fused, (0, 1)))(x, w)

  cfg = config_lib.base_config()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 4, 2, 1
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:8])
  with sharding.with_rules(mesh, sharding.rules_from_config(cfg.mesh)):
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    head = NamedSharding(mesh, P("fsdp", None))  # FSDP-sharded weights
    step = jax.jit(jax.value_and_grad(fused, (0, 1)), in_shardings=(batch, head))
    assert F._batch_split(b, per_device=True) == (8, ("data", "fsdp"))
    assert F._batch_split(b, per_device=False) == (1, None)
    l_s, g_s = step(x, w)
    program = step.lower(x, w).compile().as_text()
  np.testing.assert_allclose(l_s, l_ref, rtol=1e-6)
  for a, b_ in zip(g_s, g_ref):
    np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-7)
  # dW is D x V float32 = 4 KiB; per chunk it would be 16 x that in all-reduces.
  reduced = sum(n for kind, n in hlo.collective_bytes(program, 8).items()
                if kind in ("all-reduce", "reduce-scatter"))
  assert 0 < reduced <= 4 * d * v * 4, hlo.collective_bytes(program, 8)

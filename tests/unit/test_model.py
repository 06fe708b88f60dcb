"""Tests of wsdjax.model.transformer: shapes, parameter counts, scan/unroll, GQA, causality, loss."""

import os

# Must precede the first jax import of the test session (see tests/unit/test_sharding.py).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import dataclasses  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from wsdjax.model import transformer as M  # noqa: E402

TINY = M.ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128,
                     vocab_size=256, seq_len=16, tie_embeddings=True)
B, T = 2, 16


def tiny(**kw) -> M.ModelConfig:
  return dataclasses.replace(TINY, **kw)


def tokens(seed: int = 1, b: int = B, t: int = T, v: int = 256) -> jax.Array:
  return jax.random.randint(jax.random.key(seed), (b, t), 0, v, dtype=jnp.int32)


def init(cfg: M.ModelConfig, seed: int = 0):
  """Unboxed params of cfg's model (jitted init)."""
  model = M.build_model(cfg)
  return jax.jit(lambda r: nn.unbox(model.init(r, tokens()))["params"])(jax.random.key(seed))


def apply(cfg: M.ModelConfig, params, toks) -> jax.Array:
  return jax.jit(M.build_model(cfg).apply)({"params": params}, toks)


def _unrolled_params(scanned: dict, n_layers: int) -> dict:
  """Scanned params ('layers' with a leading layer axis) -> block_0 ... block_{L-1}."""
  out = {k: v for k, v in scanned.items() if k != "layers"}
  for i in range(n_layers):
    out[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], scanned["layers"])
  return out


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("kv", [2, 4])
def test_param_count_equals_tree(tied, scan, kv):
  cfg = tiny(tie_embeddings=tied, scan_layers=scan, n_kv_heads=kv)
  shapes = jax.eval_shape(M.build_model(cfg).init, jax.random.key(0), tokens())
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
  assert M.param_count(cfg) == n
  embedding = cfg.vocab_size * cfg.d_model * (1 if tied else 2)
  assert M.param_count(cfg, include_embedding=False) == n - embedding


def test_param_tree_names_and_logical_axes():
  shapes = jax.eval_shape(M.build_model(tiny(tie_embeddings=False)).init,
                          jax.random.key(0), tokens())
  specs = nn.get_partition_spec(shapes)["params"]
  expected = {
      "embed": {"embedding": ("vocab", "embed")},
      "final_norm": {"scale": ("norm",)},
      "lm_head": ("embed", "vocab"),
      "layers": {
          "attn": {"query": ("layers", "embed", "heads", "head_dim"),
                   "key": ("layers", "embed", "kv_heads", "head_dim"),
                   "value": ("layers", "embed", "kv_heads", "head_dim"),
                   "out": ("layers", "heads", "head_dim", "embed")},
          "attn_norm": {"scale": ("layers", "norm")},
          "mlp": {"gate": ("layers", "embed", "mlp"), "up": ("layers", "embed", "mlp"),
                  "down": ("layers", "mlp", "embed")},
          "mlp_norm": {"scale": ("layers", "norm")},
      },
  }
  got = jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert got == expected
  # Params are float32; the only vector params are norms named "scale" (weight-decay mask).
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(shapes))[0]:
    assert leaf.dtype == jnp.float32
    if leaf.ndim <= 2 and "layers" in jax.tree_util.keystr(path) or leaf.ndim == 1:
      assert path[-1].key == "scale", path


def test_forward_shape_dtype_bf16():
  cfg = tiny(dtype="bfloat16")
  params = init(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = apply(cfg, params, tokens())
  assert logits.shape == (B, T, cfg.vocab_size) and logits.dtype == jnp.float32
  ref = apply(tiny(), params, tokens())  # float32 compute, same params
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_allclose(logits, ref, atol=0.05)


def test_scan_equals_unrolled_and_remat():
  scanned = tiny(tie_embeddings=False)
  params = init(scanned)
  toks = tokens()
  ref = apply(scanned, params, toks)
  unrolled = tiny(tie_embeddings=False, scan_layers=False)
  unrolled_params = _unrolled_params(params, scanned.n_layers)
  out = apply(unrolled, unrolled_params, toks)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

  def grads(cfg, p):
    loss = lambda p: M.cross_entropy(M.build_model(cfg).apply({"params": p}, toks), toks)
    return jax.jit(jax.grad(loss))(p)

  g_ref = grads(scanned, params)
  for policy in ("full", "dots"):  # recomputing gives the gradients of keeping all
    g_remat = grads(tiny(tie_embeddings=False, remat=policy), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 g_ref, g_remat)
  g_unrolled_remat = grads(tiny(tie_embeddings=False, scan_layers=False, remat="full"),
                           unrolled_params)
  np.testing.assert_allclose(g_unrolled_remat["block_1"]["mlp"]["down"],
                             g_ref["layers"]["mlp"]["down"][1], rtol=1e-5, atol=1e-7)


def test_gqa_equals_mha_with_repeated_kv_heads():
  gqa = tiny(n_kv_heads=2)
  params = init(gqa)
  group = gqa.n_heads // gqa.n_kv_heads
  mha_params = jax.tree.map(lambda x: x, params)
  for name in ("key", "value"):  # [L, D, K, Dh] -> [L, D, H, Dh]; head h reads kv h // group
    mha_params["layers"]["attn"][name] = jnp.repeat(params["layers"]["attn"][name], group,
                                                    axis=2)
  toks = tokens()
  np.testing.assert_allclose(apply(gqa, params, toks),
                             apply(tiny(n_kv_heads=4), mha_params, toks),
                             rtol=1e-5, atol=1e-5)


def test_attention_matches_naive_reference():
  """causal_attention == explicit softmax(q k^T / sqrt(Dh) + mask) v with repeated kv."""
  kq, kk, kv = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(kq, (2, 8, 4, 16))
  k = jax.random.normal(kk, (2, 8, 2, 16))
  v = jax.random.normal(kv, (2, 8, 2, 16))
  k4, v4 = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k4) / 4.0
  s = jnp.where(jnp.tril(jnp.ones((8, 8), bool)), s, -jnp.inf)
  ref = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v4)
  np.testing.assert_allclose(M.causal_attention(q, k, v), ref, rtol=1e-5, atol=1e-5)


def test_causality():
  cfg = tiny()
  params = init(cfg)
  toks = tokens()
  t = 9
  changed = toks.at[:, t].set((toks[:, t] + 1) % cfg.vocab_size)
  a, b = apply(cfg, params, toks), apply(cfg, params, changed)
  np.testing.assert_array_equal(a[:, :t], b[:, :t])
  assert np.abs(np.asarray(a[:, t:] - b[:, t:])).max(axis=-1).min() > 0


def test_rope_relative_positions():
  """<rope(q)_i, rope(k)_j> depends only on i - j."""
  kq, kk = jax.random.split(jax.random.key(4))
  q = jnp.broadcast_to(jax.random.normal(kq, (1, 1, 1, 8)), (1, 6, 1, 8))
  k = jnp.broadcast_to(jax.random.normal(kk, (1, 1, 1, 8)), (1, 6, 1, 8))
  rq, rk = M.rope(q, 100.0)[0, :, 0], M.rope(k, 100.0)[0, :, 0]
  dots = rq @ rk.T
  np.testing.assert_allclose(dots[3, 1], dots[5, 3], rtol=1e-5)
  np.testing.assert_allclose(dots[0, 0], q[0, 0, 0] @ k[0, 0, 0], rtol=1e-5)


def test_cross_entropy():
  logits = jax.random.normal(jax.random.key(5), (2, 3, 7)) * 3
  targets = jnp.array([[0, 6, 3], [1, 1, 2]])
  ref = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1).mean()
  np.testing.assert_allclose(M.cross_entropy(logits, targets), ref, rtol=1e-6)
  assert M.cross_entropy(logits.astype(jnp.bfloat16), targets).dtype == jnp.float32
  # Uniform logits give log V; huge logits stay finite.
  np.testing.assert_allclose(M.cross_entropy(jnp.zeros((4, 7)), jnp.zeros(4, int)),
                             np.log(7), rtol=1e-6)
  big = jnp.array([[1e4, -1e4, 0.0]])
  np.testing.assert_allclose(M.cross_entropy(big, jnp.array([0])), 0.0, atol=1e-6)
  np.testing.assert_allclose(M.cross_entropy(big, jnp.array([2])), 1e4, rtol=1e-6)


def test_flops_per_token_and_describe():
  for tied in (True, False):
    cfg = tiny(tie_embeddings=tied)
    l, d, f, v, t = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.seq_len
    dh, h, k = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    non_embedding = l * (d * dh * (2 * h + 2 * k) + 3 * d * f + 2 * d) + d
    assert M.param_count(cfg, include_embedding=False) == non_embedding
    assert M.flops_per_token(cfg) == 6 * (non_embedding + v * d) + 6 * l * t * d
  line = M.describe(tiny())
  assert "\n" not in line and "params" in line and "FLOPs/token" in line


def test_model_config_from_config_and_errors():
  from wsdjax.config import base_config
  cfg = M.ModelConfig.from_config(base_config().model)
  assert isinstance(M.build_model(base_config().model), M.Transformer)
  assert cfg == M.ModelConfig.from_config(dict(base_config().model))
  with pytest.raises(ValueError, match="unknown field"):
    M.ModelConfig.from_config({"n_layer": 2})
  with pytest.raises(ValueError, match="n_kv_heads"):
    tiny(n_kv_heads=3)
  with pytest.raises(ValueError, match="dtype"):
    tiny(dtype="float16")
  with pytest.raises(ValueError, match="remat"):
    tiny(remat="some")

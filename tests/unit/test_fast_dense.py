"""Tests of wsdjax.model.kernels.fast_dense: the CPU weight-gradient trick equals plain dots (values and
gradients to float32 rounding), and the model's loss and gradients do not depend on it."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsdjax import config as config_lib
from wsdjax.model.kernels import fast_dense
from wsdjax.model import transformer as M

RTOL, ATOL = 2e-5, 1e-6


def _rand(seed, *shape):
  """Random float32 data from numpy (jax.random would compile once per shape)."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _vjp_pair(fast, plain, *args):
  """(outputs, input cotangents) of `fast` and of `plain` for a random output cotangent."""
  y_fast, vjp_fast = jax.vjp(fast, *args)
  y_plain, vjp_plain = jax.vjp(plain, *args)
  g = _rand(99, *y_plain.shape)
  return (y_fast, *vjp_fast(g)), (y_plain, *vjp_plain(g))


def _cases():
  """Each dense form against its plain jnp version; (8, 24) and (24, 8) take both
  branches of the weight-gradient transpose (K <= N and K > N)."""
  cases = []
  for k, n in [(8, 24), (24, 8)]:
    cases.append((lambda x, w: fast_dense.dense(x, w, "cpu_dw"), lambda x, w: x @ w,
                  _rand(0, 3, 5, k), _rand(1, k, n)))
    cases.append((lambda x, w: fast_dense.dense_t(x, w, "cpu_dw"), lambda x, w: x @ w.T,
                  _rand(2, 4, 3, k), _rand(3, n, k)))
  cases.append((lambda x, w: fast_dense.dense_nd(x, w, 1, "cpu_dw"),
                lambda x, w: jnp.einsum("btd,dhk->bthk", x, w), _rand(4, 2, 3, 16),
                _rand(5, 16, 4, 8)))
  cases.append((lambda o, w: fast_dense.dense_nd(o, w, 2, "cpu_dw"),
                lambda o, w: jnp.einsum("bthk,hkd->btd", o, w), _rand(6, 2, 3, 4, 8),
                _rand(7, 4, 8, 16)))
  return cases


def test_dense_values_and_grads_match_plain_dots():
  cases = _cases()
  args = [c[2:] for c in cases]
  # One jit for all cases: compiling is the slow part of this test.
  results = jax.jit(lambda args: [_vjp_pair(c[0], c[1], *a) for c, a in zip(cases, args)])(args)
  for fast, plain in results:
    for a, b in zip(fast, plain):
      assert a.shape == b.shape and a.dtype == b.dtype
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_resolve_and_errors():
  assert fast_dense.resolve("auto") == ("cpu_dw" if jax.default_backend() == "cpu" else "xla")
  # The platform compiled for decides, not this host's backend.
  assert fast_dense.resolve("auto", "tpu") == "xla" and fast_dense.resolve("auto", "gpu") == "xla"
  assert fast_dense.resolve("auto", "cpu") == "cpu_dw"
  assert fast_dense.resolve("xla") == "xla" and fast_dense.resolve("cpu_dw") == "cpu_dw"
  with pytest.raises(ValueError, match="dense_impl"):
    fast_dense.resolve("fast")
  with pytest.raises(ValueError, match="dense_impl"):
    M.ModelConfig(dense_impl="fast")
  cfg = config_lib.base_config()
  cfg.model.dense_impl = "fast"
  with pytest.raises(config_lib.ConfigError, match=r"^model.dense_impl: unknown value"):
    config_lib.validate(cfg)


@pytest.mark.parametrize("tied", [True, False])  # tied: scanned layers; untied: unrolled
def test_model_loss_and_grads_equal_with_and_without_trick(tied):
  base = M.ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64,
                       vocab_size=48, seq_len=16, tie_embeddings=tied, scan_layers=tied)
  toks = np.random.default_rng(1).integers(0, 48, (2, 17)).astype(np.int32)
  shapes = nn.unbox(jax.eval_shape(M.build_model(base).init, jax.random.key(0), toks[:, :-1]))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape).astype(np.float32),
                        shapes["params"])

  def loss_and_grads(impl, p):
    model = M.build_model(dataclasses.replace(base, dense_impl=impl))
    loss = lambda p: M.cross_entropy(model.apply({"params": p}, toks[:, :-1]), toks[:, 1:])
    return jax.value_and_grad(loss)(p)

  both = jax.jit(lambda p: (loss_and_grads("cpu_dw", p), loss_and_grads("xla", p)))
  (l_fast, g_fast), (l_plain, g_plain) = both(params)
  np.testing.assert_allclose(l_fast, l_plain, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)

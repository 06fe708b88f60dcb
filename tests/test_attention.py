"""Tests of wsdjax.attention: the query-blocked causal attention equals
jax.nn.dot_product_attention (values and gradients, grouped-query heads included). The
whole model with it: tests/test_fused_loss.py::test_model_loss_fast_path_equals_plain_path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsdjax import attention as A
from wsdjax import model as M


def _rand(seed, *shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("heads, kv_heads, block", [(4, 4, 4), (4, 2, 8), (4, 1, 6), (2, 2, 24)])
def test_query_blocked_equals_dot_product_attention(heads, kv_heads, block):
  b, t, dh = 2, 24, 8
  q, k, v = _rand(0, b, t, heads, dh), _rand(1, b, t, kv_heads, dh), _rand(2, b, t, kv_heads, dh)
  g = _rand(3, b, t, heads, dh)
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)
  ours = lambda q, k, v: A.query_blocked(q, k, v, block)

  def value_and_cotangents(f):
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(g))

  got = jax.jit(lambda: value_and_cotangents(ours))()
  want = jax.jit(lambda: value_and_cotangents(ref))()
  for a, b_ in zip(got, want):  # output, dq, dk, dv
    np.testing.assert_allclose(a, b_, rtol=1e-5, atol=2e-6)
  # Causal: position 0 attends only to itself, so its output is v[0] of its kv head.
  group = heads // kv_heads
  np.testing.assert_allclose(got[0][:, 0], np.repeat(v[:, 0], group, axis=1), rtol=1e-6)


def test_blocks_and_errors():
  assert A.default_block(256) == A.BLOCK == 64
  assert A.default_block(100) == 50 and A.default_block(7) == 7 and A.default_block(97) == 1
  x = _rand(0, 1, 10, 2, 4)
  with pytest.raises(ValueError, match="block 4 must divide the sequence length 10"):
    A.query_blocked(x, x, x, 4)
  assert A.resolve("auto") == ("blocked" if jax.default_backend() == "cpu" else None)
  assert A.resolve("xla") == "xla" and A.resolve(None) is None
  with pytest.raises(ValueError, match="attention_impl must be one of"):
    A.resolve("flash")
  with pytest.raises(ValueError, match="attention_impl"):
    M.ModelConfig(attention_impl="flash")  # the config file's check: tests/test_bad_input.py


def test_auto_picks_cudnn_on_gpu_for_half_precision(monkeypatch):
  """On GPU 'auto' means cuDNN's flash attention where it applies, XLA's elsewhere (whose
  [B, H, T, T] scores do not fit GPT-2's shape); jax's own default would be XLA's."""
  monkeypatch.setattr(A.jax, "default_backend", lambda: "gpu")
  half = jnp.zeros((2, 16, 4, 64), jnp.bfloat16)
  assert A.resolve("auto", half) == "cudnn"
  assert A.resolve("auto", half.astype(jnp.float16)) == "cudnn"
  assert A.resolve("auto", half.astype(jnp.float32)) is None  # cuDNN takes half precision
  assert A.resolve("auto", jnp.zeros((2, 16, 4, 60), jnp.bfloat16)) is None  # Dh % 8
  assert A.resolve("auto", jnp.zeros((2, 16, 4, 256), jnp.bfloat16)) is None  # Dh > 128
  assert A.resolve("auto") is None and A.resolve("xla", half) == "xla"
  monkeypatch.setattr(A.jax, "default_backend", lambda: "tpu")
  assert A.resolve("auto", half) is None


def test_auto_falls_back_to_xla_when_cudnn_refuses(monkeypatch):
  """'auto' that resolved to cuDNN falls back to XLA's attention when cuDNN refuses the
  call while tracing (here: no cuDNN at all); an explicit 'cudnn' does not."""
  monkeypatch.setattr(A.jax, "default_backend", lambda: "gpu")
  q, k, v = (_rand(i, 2, 16, 4, 64).astype(jnp.bfloat16) for i in range(3))
  want = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
  calls = []
  real = jax.nn.dot_product_attention

  def refusing(*args, implementation=None, **kw):
    calls.append(implementation)
    if implementation == "cudnn":
      raise RuntimeError("cuDNN is not detected.")
    return real(*args, implementation=implementation, **kw)

  monkeypatch.setattr(A.jax.nn, "dot_product_attention", refusing)
  got = A.causal_attention(q, k, v, "auto")
  assert calls == ["cudnn", None]
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  with pytest.raises(RuntimeError, match="cuDNN"):
    A.causal_attention(q, k, v, "cudnn")

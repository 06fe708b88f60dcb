"""Checks that need an NVIDIA GPU; skipped elsewhere (CI has none). On a GPU host:

  JAX_PLATFORMS=cuda python -m pytest tests/unit/test_gpu.py

They compare what 'auto' picks on GPU (cuDNN flash attention, the chunked LM-head loss) with
the plain paths in bfloat16, by relative error ||got - want|| / ||want|| (bf16 operands land
between 1e-3 and 1e-2).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsdjax.model.kernels import attention as A
from wsdjax.model import transformer as M

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="needs a GPU (run with JAX_PLATFORMS=cuda)")


def _rel(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("kv_heads", [12, 4])
def test_auto_attention_is_cudnn_and_matches_xla(kv_heads):
  """GPT-2 small's head shape (T 1024, 12 heads of 64; and grouped-query): 'auto' lowers
  to cuDNN's fused attention, with XLA's values and gradients."""
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, 1024, 12, 64), jnp.bfloat16)
  k, v = (jax.random.normal(kk, (2, 1024, kv_heads, 64), jnp.bfloat16) for kk in keys[1:3])
  ct = jax.random.normal(keys[3], q.shape, jnp.float32)
  assert A.resolve("auto", q) == "cudnn"

  def loss(impl):
    return lambda q, k, v: jnp.sum(A.causal_attention(q, k, v, impl).astype(jnp.float32) * ct)

  hlo = jax.jit(jax.grad(loss("auto"), argnums=(0, 1, 2))).lower(q, k, v).as_text()
  assert "cudnn" in hlo  # the fused attention custom calls, forward and backward
  got = jax.jit(lambda *a: (A.causal_attention(*a, "auto"),
                            jax.grad(loss("auto"), argnums=(0, 1, 2))(*a)))(q, k, v)
  want = jax.jit(lambda *a: (A.causal_attention(*a, "xla"),
                             jax.grad(loss("xla"), argnums=(0, 1, 2))(*a)))(q, k, v)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert np.isfinite(np.asarray(g, np.float32)).all()
    assert _rel(g, w) < 2e-2


def test_model_on_gpu_defaults_matches_plain_paths():
  """The model as 'auto' runs it on GPU (cuDNN attention, chunked loss, the Pallas SwiGLU
  backward, bf16) against XLA's attention, the plain logits + cross-entropy and autodiff's
  SwiGLU: loss and gradients."""
  base = M.ModelConfig(n_layers=2, d_model=256, n_heads=4, n_kv_heads=4, d_ff=512,
                       vocab_size=4096, seq_len=256, dtype="bfloat16")
  plain = dataclasses.replace(base, attention_impl="xla", loss_impl="plain", swiglu_impl="xla")
  toks = np.random.default_rng(0).integers(0, 4096, (8, 257)).astype(np.int32)
  params = nn.unbox(M.build_model(base).init(jax.random.key(1), toks[:, :-1]))["params"]

  def loss_and_grads(cfg):
    model = M.build_model(cfg)
    return jax.jit(jax.value_and_grad(
        lambda p: model.apply({"params": p}, toks[:, :-1], toks[:, 1:])))(params)

  (l_auto, g_auto), (l_plain, g_plain) = loss_and_grads(base), loss_and_grads(plain)
  assert abs(float(l_auto) - float(l_plain)) < 1e-2 * float(l_plain)
  for g, w in zip(jax.tree.leaves(g_auto), jax.tree.leaves(g_plain)):
    assert _rel(g, w) < 3e-2


def test_swiglu_pallas_backward_on_gpu():
  """`swiglu_impl='pallas'` lowers to its Triton kernel on GPU and gives the gradients of
  the XLA custom vjp (the same float32 expression) at GPT-2 small's width."""
  from wsdjax.model.kernels import swiglu as S
  keys = jax.random.split(jax.random.key(0), 3)
  a, u, g = (jax.random.normal(k, (4, 1024, 3072), jnp.bfloat16) for k in keys)

  def grads(impl):
    return jax.jit(lambda a, u, g: jax.vjp(lambda a, u: S.swiglu(a, u, impl), a, u)[1](g))

  assert "swiglu_bwd" in grads("pallas").lower(a, u, g).compile().as_text()
  for got, want in zip(grads("pallas")(a, u, g), grads("vjp")(a, u, g)):
    assert np.isfinite(np.asarray(got, np.float32)).all()
    assert _rel(got, want) < 5e-3

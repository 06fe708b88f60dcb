"""Tests of wsdjax.model.kernels.swiglu: every `swiglu_impl` computes silu(a) * u and its gradients."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsdjax.model import transformer as M
from wsdjax.model.kernels import swiglu as S


def _rel(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _reference(a, u, g):
  """h, da, du in float64 numpy from the formulas of the module doc."""
  a, u, g = (np.asarray(x, np.float64) for x in (a, u, g))
  s = 1 / (1 + np.exp(-a))
  return a * s * u, g * u * s * (1 + a * (1 - s)), g * a * s


KERNELS = ("xla", "vjp", "pallas")  # the impls 'auto' resolves to


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_swiglu_values_and_gradients(impl, dtype):
  keys = jax.random.split(jax.random.key(7), 3)
  shape = (2, 24, 96)  # 48 rows of 96: the Pallas kernel's blocks (8 x 32) tile both axes
  a = (3 * jax.random.normal(keys[0], shape)).astype(dtype)
  u, g = (jax.random.normal(k, shape).astype(dtype) for k in keys[1:])
  h, vjp = jax.vjp(lambda a, u: S.swiglu(a, u, impl), a, u)
  da, du = vjp(g)
  assert h.dtype == da.dtype == du.dtype == dtype
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  for got, want in zip((h, da, du), _reference(a, u, g)):
    assert _rel(got, want) < tol


def test_swiglu_vjp_is_one_float32_expression_in_bfloat16():
  """In bfloat16 the custom vjp rounds once (float32 math), autodiff at every op."""
  keys = jax.random.split(jax.random.key(3), 3)
  a, u, g = (jax.random.normal(k, (64, 256)).astype(jnp.bfloat16) for k in keys)
  want = _reference(a, u, g)[1:]
  errs = {impl: _rel(jax.vjp(lambda a, u: S.swiglu(a, u, impl), a, u)[1](g)[0], want[0])
          for impl in KERNELS}
  assert errs["vjp"] < 4e-3 and abs(errs["pallas"] - errs["vjp"]) < 1e-9
  assert errs["vjp"] < errs["xla"], errs


def test_model_swiglu_impls_agree_and_bad_impl():
  base = M.ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_ff=128,
                       vocab_size=256, seq_len=16)
  toks = jax.random.randint(jax.random.key(1), (2, 17), 0, 256)
  model = M.build_model(base)
  params = jax.jit(model.init)(jax.random.key(0), toks[:, :-1])["params"]

  def loss_and_grads(impl):
    m = M.build_model(dataclasses.replace(base, swiglu_impl=impl))
    return jax.jit(jax.value_and_grad(
        lambda p: m.apply({"params": p}, toks[:, :-1], toks[:, 1:])))(params)

  (l0, g0) = loss_and_grads("xla")
  for impl in ("vjp", "pallas"):
    l1, g1 = loss_and_grads(impl)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match="swiglu_impl: unknown value"):
    dataclasses.replace(base, swiglu_impl="fused")


def test_auto_is_the_pallas_kernel_on_gpu_only(monkeypatch):
  """'auto': the Pallas backward on GPU (the 'vjp' expression once jax drops Pallas'
  Triton backend), autodiff on CPU and TPU."""
  assert S.resolve("auto") == "xla"  # CPU, here
  # The platform compiled for decides, not this host's backend.
  assert S.resolve("auto", "gpu") in ("pallas", "vjp") and S.resolve("auto", "tpu") == "xla"
  monkeypatch.setattr(S.jax, "default_backend", lambda: "gpu")
  assert S.resolve("auto") == "pallas" and S.resolve("vjp") == "vjp"
  for capability, impl in (("7.5", "vjp"), ("8.0", "pallas"), ("9.0", "pallas")):
    gpu = types.SimpleNamespace(compute_capability=capability)  # 7.5: a T4, pre-Ampere
    monkeypatch.setattr(S.jax, "devices", lambda backend=None, gpu=gpu: [gpu])
    assert S.resolve("auto", "gpu") == impl, capability
  monkeypatch.undo()
  monkeypatch.setattr(S.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(S, "_has_pallas_triton", lambda: False)
  assert S.resolve("auto") == "vjp"
  monkeypatch.setattr(S.jax, "default_backend", lambda: "tpu")
  assert S.resolve("auto") == "xla"
  with pytest.raises(ValueError, match="swiglu_impl must be one of"):
    S.resolve("triton")


def test_kernel_blocks_and_the_gpu_fallback():
  """Blocks of up to 8 rows x 1024 columns that divide the array; on a GPU, None (XLA's
  expression instead of the kernel) where only blocks under 8 x 128 would fit."""
  assert S.blocks(131072, 3072, on_gpu=True) == (8, 1024)
  assert S.blocks(4096, 384, on_gpu=True) == (8, 128)
  assert S.blocks(48, 96, on_gpu=False) == (8, 32)
  assert S.blocks(4096, 2730, on_gpu=True) is None  # 2730 = 2 x 1365
  assert S.blocks(4, 4096, on_gpu=True) is None
  assert S.blocks(4096, 2730, on_gpu=False) == (8, 2)

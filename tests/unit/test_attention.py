"""Tests of wsdjax.model.kernels.attention: the query-blocked causal attention and the Pallas splash kernel
(in interpret mode on CPU, unsharded and per device under an 8-device mesh) equal
jax.nn.dot_product_attention (values and gradients, grouped-query heads included); which
implementation 'auto' picks per platform. The whole model with blocked attention:
tests/unit/test_fused_loss.py::test_model_loss_fast_path_equals_plain_path; the splash kernel
compiled for TPU ahead of time: tests/unit/test_tpu_attention.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from wsdjax.model.kernels import attention as A
from wsdjax import config as config_lib
from wsdjax.model import transformer as M
from wsdjax.runtime import sharding


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
    M.ModelConfig(attention_impl="flash")  # the config file's check: tests/integration/test_bad_input.py


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
  assert A.resolve("auto", half) is None  # T 16: not a multiple of the splash block


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


# ---- splash attention (Pallas TPU kernel, interpret mode here) --------------------------


def _plain(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def _value_and_cotangents(f, q, k, v, g):
  out, vjp = jax.vjp(f, q, k, v)
  return (out, *vjp(g))


def _inputs(b, t, heads, kv_heads, dh, dtype=jnp.float32):
  shapes = [(b, t, heads, dh), (b, t, kv_heads, dh), (b, t, kv_heads, dh), (b, t, heads, dh)]
  return [jnp.asarray(_rand(i, *s), dtype) for i, s in enumerate(shapes)]  # q, k, v, g


def _assert_like_plain(got, args):
  """`got` (output, dq, dk, dv) equals the plain path's at float32 rounding, or for
  bfloat16 inputs: is as close to the float32 result as the plain path in bfloat16 is."""
  f32 = lambda x: np.asarray(x, np.float32)
  ref = jax.jit(lambda *a: _value_and_cotangents(_plain, *a))(*(a.astype(jnp.float32)
                                                                for a in args))
  if args[0].dtype == jnp.float32:
    for a, w in zip(got, ref):
      np.testing.assert_allclose(a, w, rtol=1e-5, atol=2e-5)
    return
  plain = jax.jit(lambda *a: _value_and_cotangents(_plain, *a))(*args)
  for a, p, w in zip(got, plain, ref):
    assert a.dtype == args[0].dtype
    err, plain_err = np.abs(f32(a) - f32(w)), np.abs(f32(p) - f32(w))
    assert err.max() <= 1.5 * plain_err.max() + 1e-3, (err.max(), plain_err.max())
    assert err.mean() <= 1.5 * plain_err.mean() + 1e-5, (err.mean(), plain_err.mean())


@pytest.mark.parametrize("kv_heads, dh, dtype, block", [
    (4, 64, "float32", 128), (2, 64, "float32", 128), (1, 128, "float32", None),
    (2, 64, "bfloat16", 128)])
def test_splash_equals_plain_path(kv_heads, dh, dtype, block):
  """The Pallas splash kernel (interpret mode: this is CPU) against jax's attention, values
  and gradients. T 256 in blocks of 128: per head two diagonal blocks (masked inside), one
  full block and one skipped; block None: the default, one 256-block."""
  args = _inputs(2, 256, 4, kv_heads, dh, jnp.dtype(dtype))
  splash = lambda q, k, v: A.splash_attention(q, k, v, block=block)
  got = jax.jit(lambda *a: _value_and_cotangents(splash, *a))(*args)
  _assert_like_plain(got, args)
  # Causal: position 0 attends only to itself, so its output is v[0] of its kv head.
  np.testing.assert_allclose(np.asarray(got[0][:, 0], np.float32),
                             np.repeat(np.asarray(args[2][:, 0], np.float32), 4 // kv_heads,
                                       axis=1), rtol=1e-6, atol=1e-6)


def _mesh(shape=(2, 2, 2)):
  auto = (jax.sharding.AxisType.Auto,) * 3
  return jax.make_mesh(shape, sharding.MESH_AXES, axis_types=auto,
                       devices=jax.devices()[:int(np.prod(shape))])


RULES = sharding.rules_from_config(config_lib.base_config().mesh)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_splash_per_device_under_a_mesh_equals_plain_path(kv_heads):
  """Under an 8-device mesh (data 2, fsdp 2, tensor 2) and the default logical rules the
  kernel runs per device (shard_map): batch over data x fsdp, heads over tensor where it
  divides H and K (kv_heads 2), else replicated over tensor (kv_heads 1); values and
  gradients equal the unsharded plain path."""
  args = _inputs(4, 256, 4, kv_heads, 64)
  mesh = _mesh()
  with sharding.with_rules(mesh, RULES):
    f = jax.jit(lambda *a: _value_and_cotangents(
        lambda q, k, v: A.causal_attention(q, k, v, "splash"), *a))
    assert "shard_map" in str(jax.make_jaxpr(f)(*args))
    got = f(*args)
  _assert_like_plain(got, args)
  heads = "tensor" if kv_heads == 2 else None
  want = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None, heads))
  assert all(x.sharding.is_equivalent_to(want, 4) for x in got[:2])


def test_splash_shard_map_specs_follow_the_logical_rules():
  """What `_local_specs` derives: batch over the 'act_batch' axes that divide B (in order),
  heads over the 'act_heads' axes when they equal the 'act_kv_heads' ones and divide H and
  K; the sequence never sharded; no rules in force: everything replicated."""
  mesh = _mesh()
  axes = frozenset(sharding.MESH_AXES)

  def specs(b, h, kv):
    q_spec, kv_spec = A._local_specs(mesh, (b, 256, h, 64), (b, 256, kv, 64), axes)
    assert q_spec == kv_spec  # each shard holds whole query-head groups with their kv head
    return q_spec

  seq_rules = tuple((n, "tensor" if n == "act_length" else a) for n, a in RULES)
  kv_rules = tuple((n, None if n == "act_kv_heads" else a) for n, a in RULES)
  with sharding.with_rules(mesh, RULES):
    assert specs(4, 4, 2) == P(("data", "fsdp"), None, "tensor", None)
    assert specs(2, 4, 2) == P("data", None, "tensor", None)  # fsdp does not divide B 2
    assert specs(3, 4, 1) == P(None, None, None, None)  # B 3, K 1: nothing divides
    assert specs(4, 6, 3) == P(("data", "fsdp"), None, None, None)
  with sharding.with_rules(mesh, seq_rules):  # a sequence-parallel rule is not followed
    assert specs(4, 4, 2) == P(("data", "fsdp"), None, None, None)
  with sharding.with_rules(mesh, kv_rules):  # kv heads not over tensor: no head sharding
    assert specs(4, 4, 2) == P(("data", "fsdp"), None, None, None)
  with jax.set_mesh(mesh):
    assert specs(4, 4, 2) == P(None, None, None, None)


def test_auto_per_platform_and_splash_shapes():
  """'auto' per platform: 'blocked' on cpu, the cuDNN rules on gpu, 'splash' on tpu where
  the kernel takes the shapes (T a multiple of 128), XLA's otherwise; the platform defaults
  to the devices of the mesh in force, else jax.default_backend()."""
  q = jnp.zeros((2, 256, 4, 64), jnp.bfloat16)
  assert A.resolve("auto", q, platform="tpu") == "splash"
  assert A.resolve("auto", q.astype(jnp.float32), platform="tpu") == "splash"
  assert A.resolve("auto", jnp.zeros((2, 200, 4, 64)), platform="tpu") is None
  assert A.resolve("auto", None, platform="tpu") is None
  assert A.resolve("auto", q, platform="cpu") == "blocked"
  assert A.resolve("auto", q, platform="gpu") == "cudnn"
  assert A.resolve("auto", q.astype(jnp.float32), platform="gpu") is None
  assert A.resolve("splash", q, platform="cpu") == "splash"
  assert sharding.platform_of(jax.sharding.get_abstract_mesh()) is None  # no mesh in force
  with sharding.with_rules(_mesh(), RULES):
    assert sharding.current_platform() == "cpu" and A.resolve("auto", q) == "blocked"
  assert A.splash_block(256) == 256 and A.splash_block(1024) == 512
  assert A.splash_block(384) == 384 and A.splash_block(640) == 128
  assert A.splash_block(1536) == 512 and A.splash_block(1024, 256) == 256
  with pytest.raises(ValueError, match="multiple of 128, got 200"):
    A.splash_block(200)
  k = jnp.zeros((2, 256, 3, 64), jnp.bfloat16)
  assert A.splash_fits(q) and not A.splash_fits(q, k)  # H 4 not a multiple of K 3
  assert not A.splash_fits(q, k[:, :, :2].astype(jnp.float32))  # dtypes differ
  assert not A.splash_fits(jnp.zeros((2, 256, 4, 64), jnp.int32))
  with pytest.raises(ValueError, match="T a multiple of 128"):
    A.causal_attention(q[:, :200], q[:, :200], q[:, :200], "splash")
  with pytest.raises(ValueError, match="splash block 192 must be a multiple of 128"):
    A.splash_attention(q, q, q, block=192)
  x = jnp.asarray(_rand(0, 1, 200, 2, 8))  # 'auto' on tpu, T 200: XLA's attention
  np.testing.assert_allclose(A.causal_attention(x, x, x, "auto", platform="tpu"),
                             _plain(x, x, x), rtol=1e-6, atol=1e-6)

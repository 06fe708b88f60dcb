"""Tests of wsdjax.runtime.sharding on 8 fake CPU devices: meshes, specs, sharded init and forward."""

import os

# Must precede the first jax import of the test session: gives the CPU 8 fake devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import dataclasses  # noqa: E402
import functools  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from wsdjax.model import transformer as M  # noqa: E402
from wsdjax.runtime import sharding as S  # noqa: E402
from wsdjax.config import base_config  # noqa: E402

N_DEVICES = 8
if jax.device_count() < N_DEVICES:
  pytest.skip(f"needs {N_DEVICES} devices, jax has {jax.device_count()}: jax was initialised "
              "before XLA_FLAGS=--xla_force_host_platform_device_count=8 took effect "
              "(run this file on its own, or export XLA_FLAGS)", allow_module_level=True)

LAYOUTS = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]
TINY = M.ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128,
                     vocab_size=256, seq_len=16, tie_embeddings=False)
BATCH = 8
DEVICES = jax.devices()[:N_DEVICES]


def mesh_cfg(data, fsdp, tensor, rules=None) -> ml_collections.ConfigDict:
  c = base_config().mesh
  c.data, c.fsdp, c.tensor = data, fsdp, tensor
  if rules is not None:
    c.rules = rules
  return c


def mesh_and_rules(layout):
  cfg = mesh_cfg(*layout)
  return S.make_mesh(cfg, DEVICES), S.rules_from_config(cfg)


def toks(v=256) -> jax.Array:
  return jax.random.randint(jax.random.key(1), (BATCH, TINY.seq_len), 0, v, dtype=jnp.int32)


def loss_fn(model):
  def loss(params, tokens):
    logits = model.apply({"params": params}, tokens)
    return M.cross_entropy(logits[:, :-1], tokens[:, 1:])
  return loss


def sharded_init(model, mesh, rules, tokens):
  """(params sharded by the rules, their shardings), initialised under jit."""
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens)
  shardings = S.logical_to_shardings(boxed, mesh, rules)["params"]
  init = lambda rng: nn.unbox(model.init(rng, tokens))["params"]
  with S.with_rules(mesh, rules):
    params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  return params, shardings


def specs(shardings):
  return jax.tree.map(lambda s: s.spec, shardings)


# ---- mesh construction -------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_make_mesh_layouts(layout):
  mesh = S.make_mesh(mesh_cfg(*layout), DEVICES)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == layout
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in DEVICES)


def test_make_mesh_fills_minus_one():
  assert tuple(S.make_mesh(mesh_cfg(-1, 1, 1), DEVICES).shape.values()) == (8, 1, 1)
  assert tuple(S.make_mesh(mesh_cfg(2, -1, 2), DEVICES).shape.values()) == (2, 2, 2)
  assert tuple(S.make_mesh(mesh_cfg(1, 1, -1), DEVICES[:2]).shape.values()) == (1, 1, 2)


@pytest.mark.parametrize("layout, message", [
    ((2, 2, 1), r"mesh: data\*fsdp\*tensor = 4 but there are 8 devices; make the product"),
    ((4, 4, 1), r"mesh: data\*fsdp\*tensor = 16 but there are 8 devices"),
    ((-1, -1, 1), r"mesh.fsdp: more than one axis is -1; set at most one"),
    ((3, -1, 1), r"mesh.fsdp: cannot fill: 8 devices are not divisible by the other axes \(3\)"),
    ((0, 8, 1), r"mesh.data: must be -1 or >= 1, got 0"),
])
def test_make_mesh_errors(layout, message):
  with pytest.raises(ValueError, match=message):
    S.make_mesh(mesh_cfg(*layout), DEVICES)


def test_rules_from_config_converts_lists():
  cfg = mesh_cfg(8, 1, 1, rules=[["act_batch", ["data", "fsdp"]], ["embed", "fsdp"],
                                 ["layers", None]])
  assert S.rules_from_config(cfg) == (("act_batch", ("data", "fsdp")), ("embed", "fsdp"),
                                      ("layers", None))
  default = S.rules_from_config(base_config().mesh)
  assert dict(default)["act_batch"] == ("data", "fsdp") and dict(default)["vocab"] == "tensor"


def test_batch_and_replicated():
  mesh, _ = mesh_and_rules((2, 2, 2))
  assert S.batch_sharding(mesh) == NamedSharding(mesh, P(("data", "fsdp"), None))
  assert S.replicated(mesh) == NamedSharding(mesh, P())


# ---- parameter specs ----------------------------------------------------------------------


def test_param_specs_default_rules_scanned_untied():
  mesh, rules = mesh_and_rules((2, 2, 2))
  model = M.build_model(TINY)
  boxed = jax.eval_shape(model.init, jax.random.key(0), toks())
  got = specs(S.logical_to_shardings(boxed, mesh, rules))["params"]
  assert got == {
      "embed": {"embedding": P("tensor", "fsdp")},
      "final_norm": {"scale": P(None)},
      "lm_head": P("fsdp", "tensor"),
      "layers": {
          "attn": {"query": P(None, "fsdp", "tensor", None),
                   "key": P(None, "fsdp", "tensor", None),
                   "value": P(None, "fsdp", "tensor", None),
                   "out": P(None, "tensor", None, "fsdp")},
          "attn_norm": {"scale": P(None, None)},
          "mlp": {"gate": P(None, "fsdp", "tensor"), "up": P(None, "fsdp", "tensor"),
                  "down": P(None, "tensor", "fsdp")},
          "mlp_norm": {"scale": P(None, None)},
      },
  }


def test_param_specs_unrolled_tied_and_indivisible_heads():
  # tensor=8 does not divide 4 heads or 2 kv heads: those dims are replicated.
  mesh, rules = mesh_and_rules((1, 1, 8))
  cfg = dataclasses.replace(TINY, scan_layers=False, tie_embeddings=True)
  boxed = jax.eval_shape(M.build_model(cfg).init, jax.random.key(0), toks())
  got = specs(S.logical_to_shardings(boxed, mesh, rules))["params"]
  assert "lm_head" not in got and "layers" not in got
  assert got["embed"]["embedding"] == P("tensor", "fsdp")
  assert got["block_1"]["attn"] == {"query": P("fsdp", None, None),
                                    "key": P("fsdp", None, None),
                                    "value": P("fsdp", None, None),
                                    "out": P(None, None, "fsdp")}
  assert got["block_0"]["mlp"]["gate"] == P("fsdp", "tensor")
  assert got["block_0"]["attn_norm"]["scale"] == P(None)


def test_indivisible_vocab_is_replicated_not_an_error():
  mesh, rules = mesh_and_rules((4, 1, 2))
  box = nn.LogicallyPartitioned(jax.ShapeDtypeStruct((50257, 64), jnp.float32),
                                names=("vocab", "embed"))
  tree = {"embedding": box, "count": jax.ShapeDtypeStruct((), jnp.int32)}
  out = S.logical_to_shardings(tree, mesh, rules)
  assert out["embedding"].spec == P(None, "fsdp")
  assert out["count"] == NamedSharding(mesh, P())
  # A real model with an odd vocabulary initialises sharded and runs.
  mesh, rules = mesh_and_rules((2, 2, 2))
  cfg = dataclasses.replace(TINY, vocab_size=257, tie_embeddings=True)
  model = M.build_model(cfg)
  params, shardings = sharded_init(model, mesh, rules, toks(257))
  assert shardings["embed"]["embedding"].spec == P(None, "fsdp")
  with S.with_rules(mesh, rules):
    loss = jax.jit(loss_fn(model))(params, toks(257))
  assert np.isfinite(loss)


def test_optimizer_state_shardings_follow_params():
  optax = pytest.importorskip("optax")
  mesh, rules = mesh_and_rules((2, 2, 2))
  boxed = jax.eval_shape(M.build_model(TINY).init, jax.random.key(0), toks())["params"]
  opt_state = jax.eval_shape(optax.adamw(1e-3).init, boxed)
  shardings = S.logical_to_shardings(opt_state, mesh, rules)
  adam = shardings[0]
  assert adam.count == NamedSharding(mesh, P())
  assert adam.mu["layers"]["mlp"]["gate"].spec == P(None, "fsdp", "tensor")
  assert jax.tree.structure(adam.nu) == jax.tree.structure(nn.unbox(boxed))


# ---- sharded init and forward equal the single-device model -------------------------------


@pytest.fixture(scope="module")
def reference():
  """Params and loss of the unsharded model (one device, no mesh, no rules)."""
  model = M.build_model(TINY)
  params = jax.jit(lambda r: nn.unbox(model.init(r, toks()))["params"])(jax.random.key(0))
  return params, float(jax.jit(loss_fn(model))(params, toks()))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_init_and_forward_match_single_device(layout, reference):
  ref_params, ref_loss = reference
  mesh, rules = mesh_and_rules(layout)
  model = M.build_model(TINY)
  params, shardings = sharded_init(model, mesh, rules, toks())
  # Initialised directly with the requested shardings, and the same values as unsharded.
  jax.tree.map(lambda x, s: np.testing.assert_equal(x.sharding.is_equivalent_to(s, x.ndim),
                                                    True), params, shardings)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               params, ref_params)
  tokens = jax.device_put(toks(), S.batch_sharding(mesh))
  with S.with_rules(mesh, rules):
    loss = jax.jit(loss_fn(model))(params, tokens)
    logits = jax.jit(model.apply)({"params": params}, tokens)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  # The logical constraint on the logits resolved to mesh axes inside jit.
  expected = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
  assert logits.sharding.is_equivalent_to(expected, 3)


@pytest.fixture(scope="module")
def reference_grads(reference):
  """Gradients of the unsharded model's loss (the logits path) at the reference params."""
  ref_params, _ = reference
  return jax.jit(jax.grad(loss_fn(M.build_model(TINY))))(ref_params, toks())


def test_sharded_gradients_match_single_device(reference_grads):
  model = M.build_model(TINY)
  mesh, rules = mesh_and_rules((2, 2, 2))
  params, shardings = sharded_init(model, mesh, rules, toks())
  with S.with_rules(mesh, rules):
    grads = jax.jit(jax.grad(loss_fn(model)), out_shardings=shardings)(params, toks())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, reference_grads)


def test_sharded_fused_loss_gradients_match_single_device(reference, reference_grads,
                                                          monkeypatch):
  """The CPU fast path's chunked LM-head loss (5 chunks of 3 of the 15 positions) and the
  unrolled loop over stacked blocks, on a 2x2x2 mesh: the same loss and gradients as the
  logits path on one device."""
  from wsdjax.model.kernels import fused_loss
  monkeypatch.setattr(fused_loss, "CHUNK_ROWS", 3 * BATCH)
  _, ref_loss = reference
  model = M.build_model(dataclasses.replace(TINY, dense_impl="cpu_dw",
                                            layer_loop="unrolled"))
  fused = lambda p, t: model.apply({"params": p}, t[:, :-1], t[:, 1:])
  mesh, rules = mesh_and_rules((2, 2, 2))
  params, shardings = sharded_init(model, mesh, rules, toks())
  with S.with_rules(mesh, rules):
    loss, grads = jax.jit(jax.value_and_grad(fused),
                          out_shardings=(S.replicated(mesh), shardings))(
        params, jax.device_put(toks(), S.batch_sharding(mesh)))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, reference_grads)


@pytest.mark.parametrize("layout", [(2, 2, 2), (1, 1, 8)])
def test_sharded_pallas_swiglu_gradients_match_single_device(layout, reference_grads):
  """swiglu_impl='pallas' (interpreted here) runs its backward per shard of the hidden
  activations under a mesh (data x fsdp x tensor, and all 8 on tensor): the gradients of
  the unsharded autodiff model, with no gathered activations."""
  model = M.build_model(dataclasses.replace(TINY, swiglu_impl="pallas"))
  mesh, rules = mesh_and_rules(layout)
  params, shardings = sharded_init(model, mesh, rules, toks())
  step = jax.jit(jax.grad(loss_fn(model)), out_shardings=shardings)
  tokens = jax.device_put(toks(), S.batch_sharding(mesh))
  with S.with_rules(mesh, rules):
    grads = step(params, tokens)
    hlo = step.lower(params, tokens).as_text()
  assert "shard_map" in hlo or "sdy.manual_computation" in hlo  # the kernel ran per shard
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, reference_grads)


@pytest.mark.parametrize("width, per_shard", [(128, True), (100, False)])
def test_pallas_swiglu_runs_per_shard_only_where_the_rules_shard_evenly(width, per_shard):
  """Hidden width 128 over tensor=8: the kernel runs per shard. Width 100 (8 does not
  divide it): the rules' tensor axis would be dropped and a shard_map would gather the
  arrays whole, so the backward is XLA's float32 expression, still sharded by GSPMD."""
  from wsdjax.model.kernels import swiglu
  mesh, rules = mesh_and_rules((1, 1, 8))
  keys = jax.random.split(jax.random.key(2), 3)
  a, u, g = (jax.random.normal(k, (BATCH, 16, width)) for k in keys)

  def grads(impl):
    f = lambda a, u: swiglu.swiglu(a, u, impl, M.MLP_HIDDEN)
    return jax.jit(lambda a, u, g: jax.vjp(f, a, u)[1](g))

  with S.with_rules(mesh, rules):
    hlo = grads("pallas").lower(a, u, g).as_text()
    got = grads("pallas")(a, u, g)
  assert (("shard_map" in hlo or "sdy.manual_computation" in hlo) == per_shard)
  for x, y in zip(got, grads("vjp")(a, u, g)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


# ---- how FSDP weights reach the matmuls: gathered each use or once a step ---------------

def micro_grads(model, params, tokens, mesh=None, rules=(), shardings=None,
                gather_once=False):
  """(loss, grads) of `steps.loss_and_grads` in 2 micro-batches, jitted; without a mesh
  the path every step took before the gathers were explicit (no constraints at all)."""
  from wsdjax.training import steps
  fn = functools.partial(steps.loss_and_grads, model=model, micro_batches=2,
                         grad_sharding=shardings, gather_once=gather_once)
  if mesh is None:
    return jax.jit(fn)(params, tokens)
  with S.with_rules(mesh, rules):
    return jax.jit(fn, out_shardings=(S.replicated(mesh), shardings))(params, tokens)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gather_modes_on_one_device_keep_the_bits(dtype):
  """On one device (a CPU run) the gathers and reduce-scatters are no-ops: 'each_use' (the
  default) gives the loss and gradients of the unconstrained path bit for bit, in float32
  (CPU's compute dtype) and bfloat16 (TPU's); 'once_per_step' too in float32 (in bfloat16
  the gathered copy's gradient is rounded to bfloat16 before the float32 sum)."""
  model = M.build_model(dataclasses.replace(TINY, dtype=dtype))
  tokens = toks()
  one = mesh_cfg(1, 1, 1)
  mesh, rules = S.make_mesh(one, DEVICES[:1]), S.rules_from_config(one)
  params, shardings = sharded_init(model, mesh, rules, tokens)
  ref_loss, ref = micro_grads(model, params, tokens)
  for once in (False, True) if dtype == "float32" else (False,):
    loss, grads = micro_grads(model, params, tokens, mesh, rules, shardings, once)
    assert float(loss) == float(ref_loss), once
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 grads, ref)


def test_both_gather_modes_match_one_device_on_a_mesh(reference_grads):
  """FSDP x DP x tensor over 8 devices: gradients like one device's, and left in the
  parameters' shardings (reduce-scattered, not replicated)."""
  model = M.build_model(TINY)
  mesh, rules = mesh_and_rules((2, 2, 2))
  tokens = toks()
  params, shardings = sharded_init(model, mesh, rules, tokens)
  batch = jax.device_put(jnp.concatenate([tokens, tokens]), S.batch_sharding(mesh))
  for once in (False, True):
    _, grads = micro_grads(model, params, batch, mesh, rules, shardings, once)
    jax.tree.map(lambda g, s: np.testing.assert_equal(g.sharding.is_equivalent_to(s, g.ndim),
                                                      True), grads, shardings)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads, reference_grads)


def test_gathered_constrains_forward_and_backward():
  """`gathered` replicates a weight over 'fsdp' for its use (tensor axes stay) and hands
  its gradient back in the parameter's own sharding; inside `weights_gathered` the forward
  is left alone."""
  mesh, rules = mesh_and_rules((1, 4, 2))
  w = jax.device_put(jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32),
                     NamedSharding(mesh, P("fsdp", "tensor")))

  def use(w):
    return S.gathered(w, ("embed", "mlp"))

  with S.with_rules(mesh, rules):
    out = jax.jit(use)(w)
    grad = jax.jit(jax.grad(lambda w: jnp.sum(use(w) ** 2)))(w)
    program = jax.jit(use).lower(w).as_text()
    with S.weights_gathered():  # a new function: jit caches the trace of `use`
      left = jax.jit(lambda w: use(w)).lower(w).as_text()
  assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "tensor")), 2)
  assert grad.sharding.is_equivalent_to(NamedSharding(mesh, P("fsdp", "tensor")), 2)
  np.testing.assert_array_equal(np.asarray(grad), 2 * np.asarray(w))
  assert program.count("sdy.sharding_constraint") == 2  # the shards, then gathered
  assert left.count("sdy.sharding_constraint") == 0

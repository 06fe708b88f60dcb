"""The splash attention kernel compiled for TPU ahead of time, on this CPU host: libtpu
compiles for a v5e 2x2 topology (4 chips, abstract devices) while everything that runs
stays on CPU (JAX_PLATFORMS=cpu; ../shared/FACTS.md, "Compiling for TPU without a TPU").
Its values and gradients: tests/unit/test_attention.py (Pallas interpret mode)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wsdjax.model.kernels import attention as A
from wsdjax import config as config_lib
from wsdjax.model import transformer as M
from wsdjax.runtime import sharding
from wsdjax.runtime.tpu import hlo

# No skip without libtpu: `make test` installs it (the '[tpu]' extra), so CI always runs these.
import libtpu  # noqa: E402,F401 - compiling for TPU needs it: pip install -e '.[tpu]'

RULES = sharding.rules_from_config(config_lib.base_config().mesh)
KERNEL = 'custom_call_target="tpu_custom_call"'  # a Pallas (Mosaic) kernel in TPU HLO


@pytest.fixture(scope="module")
def tpu_mesh():
  """A ('data', 'fsdp', 'tensor') = (1, 2, 2) mesh of a v5e 2x2 topology's 4 chips."""
  # Quiet libtpu on a host without a TPU; skip its lock file (another process, e.g. the
  # other test worker, may hold libtpu too: it only compiles here).
  for name, value in (("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
                      ("TPU_WORKER_HOSTNAMES", "localhost"),
                      ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(name, value)
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")
  assert topo.devices[0].platform == "tpu"
  auto = (jax.sharding.AxisType.Auto,) * 3
  return jax.sharding.Mesh(np.asarray(topo.devices).reshape(1, 2, 2), sharding.MESH_AXES,
                           axis_types=auto)


def _compile(mesh, f, *args):
  with sharding.with_rules(mesh, RULES):
    return jax.jit(f).lower(*args).compile().as_text()


@pytest.mark.parametrize("impl, platform, dh", [("splash", "tpu", 64), ("auto", None, 128)])
def test_splash_compiles_for_tpu(tpu_mesh, impl, platform, dh):
  """Forward and gradient of causal_attention with the kernel, per chip (shard_map: batch
  over fsdp, heads over tensor), compile for TPU: the forward, dq and dkv kernels are in
  the HLO. 'auto' with no platform picks 'splash' from the mesh's devices; with T 200
  (not a multiple of 128) it picks XLA's attention, no kernel."""
  def shapes(t, heads):
    spec = NamedSharding(tpu_mesh, P(("data", "fsdp"), None, "tensor"))
    return jax.ShapeDtypeStruct((4, t, heads, dh), jnp.bfloat16, sharding=spec)

  def loss(q, k, v):
    out = A.causal_attention(q, k, v, impl, platform)
    return jnp.sum(jnp.square(out.astype(jnp.float32)))

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
  args = (shapes(256, 4), shapes(256, 2), shapes(256, 2))
  program = _compile(tpu_mesh, grad, *args)
  assert program.count(KERNEL) == 2  # the forward, one fused backward (dq, dk, dv)
  # Per chip: 2 sequences x 2 heads; blocks of 256 = T, so every score block is visited;
  # 2 + 5 matmuls of 2 x 256 x 256 x Dh FLOPs each (hlo.splash_flops).
  assert A.SPLASH_FUSED_BACKWARD
  assert hlo.splash_flops(program, 256, True) == (2 + 5) * 2 * (2 * 2) * 256 * 256 * dh
  assert hlo.splash_flops(program, 128, True) == 0.75 * hlo.splash_flops(program, 256, True)
  assert _compile(tpu_mesh, lambda *a: A.causal_attention(*a, impl, platform),
                  *args).count(KERNEL) == 1
  if impl == "auto":
    short = (shapes(200, 4), shapes(200, 2), shapes(200, 2))
    assert KERNEL not in _compile(tpu_mesh, grad, *short)


def test_model_with_auto_attention_compiles_for_tpu(tpu_mesh):
  """A bfloat16 model (scanned layers, full remat) built for 'tpu': loss and gradients
  compile with the splash kernels (the forward's twice: once again in the remat)."""
  cfg = M.ModelConfig(n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, d_ff=256,
                      vocab_size=256, seq_len=256, dtype="bfloat16", remat="full")
  model = M.build_model(cfg, platform="tpu")
  tokens = jax.ShapeDtypeStruct((4, 256), jnp.int32)
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.unbox(boxed), sharding.logical_to_shardings(boxed, tpu_mesh, RULES))
  tokens = jax.ShapeDtypeStruct((4, 256), jnp.int32, sharding=sharding.batch_sharding(tpu_mesh))
  hlo = _compile(tpu_mesh, jax.value_and_grad(lambda p, t: model.apply(p, t, t)),
                 params, tokens)
  assert hlo.count(KERNEL) == 3  # forward, forward again (remat), fused backward

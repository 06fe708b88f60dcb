"""`python -m wsdjax.aot`: compiling the real steps for Cloud TPU slices on this CPU host.

libtpu is installed by `make test` (the '[tpu]' extra), so these never skip in CI: tiny
configs on a v5litepod-4 (2x2) and a v4-8 (megacore), the exit codes, and the HLO readers
(`wsdjax.runtime.tpu.hlo`) checked against programs whose FLOPs and traffic are known.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from conftest import REPO, subprocess_env
from wsdjax.model import transformer as model_lib
from wsdjax.runtime.tpu import hlo, host, slices

TINY = os.path.join(REPO, "configs", "tiny.py")


def aot(*args, timeout=600, pre=""):
  """Run the CLI; (returncode, stdout, stderr)."""
  env = subprocess_env(1)
  code = pre + "import runpy; runpy.run_module('wsdjax.aot', run_name='__main__')"
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def errors(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("wsdjax:")]


# ---- slices ----
def test_slice_names_map_to_libtpu_topologies():
  s = slices.lookup("v4-64")
  assert (s.chips, s.topology, s.chip_config) == (32, "v4:2x4x4", "megacore")
  s = slices.lookup("v5e-64")
  assert (s.name, s.chips, s.topology, s.chip_config) == ("v5litepod-64", 64, "v5e:8x8", None)
  assert slices.lookup("v5litepod-4").topology == "v5e:2x2"
  assert slices.lookup("v4-8").topology == "v4:2x2x1"
  assert slices.lookup("v5p-8").chips == 4 and slices.lookup("v6e-8").topology == "v6e:2x4"
  assert slices.lookup("v5litepod-64").hbm_bytes == int(15.75 * slices.GIB)
  names = slices.names()
  assert {"v4-8", "v4-512", "v5litepod-4", "v5litepod-256", "v5p-8", "v6e-4"} <= set(names)
  for bad in ("v4-12", "v3-8", "v5litepod-3", "tpu", "v4-"):
    with pytest.raises(slices.UnknownSlice, match="--topology"):
      slices.lookup(bad)


def test_every_listed_slice_has_the_chips_libtpu_reports():
  for name in ("v4-8", "v4-16", "v5litepod-8", "v5p-16", "v6e-4"):
    s = slices.lookup(name)
    devices = slices.topology_devices(s)
    assert len(devices) == s.chips and devices[0].platform == "tpu", name


# ---- the CLI ----
DP, FSDP = {"data": 4, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 1}


@pytest.mark.parametrize("topology,mesh,gather", [("v5litepod-4", DP, None),
                                                  ("v4-8", FSDP, "each_use"),
                                                  ("v5litepod-4", FSDP, "once_per_step")])
def test_tiny_config_compiles_for_small_slices(tmp_path, topology, mesh, gather):
  """Exit 0 with the report; the mesh over the slice's chips, TPU kernels (splash attention
  at a sequence of 128), per-chip memory, FLOPs and the collectives DP and FSDP imply.
  FSDP (bfloat16, 2 micro-batches): the traffic against the FSDP minimum the report
  states, within bounds a float32 gather (2x the gathers) or gradients all-reduced whole
  in float32 (+2x the reduce-scatters) would break; 'once_per_step' gathers a quarter."""
  out = tmp_path / "r.json"
  extra = ["--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.model.dtype=bfloat16",
           "--config.model.remat=dots", "--config.train.micro_batches=2",
           f"--config.mesh.gather_weights={gather}"] if gather else []
  rc, stdout, stderr = aot("--config", TINY, "--topology", topology, "--json", str(out),
                           "--config.model.seq_len=128", *extra)
  assert rc == 0, stderr[-2000:]
  r = json.loads(out.read_text())
  assert r["fits"] and r["mesh"] == mesh and r["chips"] == 4
  assert r["kernels"]["attention"] == "splash" and r["kernels"]["dense"] == "xla"
  assert r["kernels"]["loss"] == "chunked"
  assert 0 < r["state_bytes"] <= r["total_bytes"] < 0.9 * r["hbm_bytes"]
  # model FLOPs: 6N + 6LTD per token; the compiled program does a little more (the
  # splash kernels' backward recomputes the scores, and every score block of T 128 is
  # visited, masked or not).
  assert r["model_flops"] == pytest.approx(
      model_lib.flops_per_token(dict(_tiny_model(seq_len=128))) * 16 * 128)
  assert r["model_flops"] < r["xla_flops"] < 1.5 * r["model_flops"]
  traffic, floor = r["collective_bytes"], r["fsdp_minimum"]
  if gather:
    assert r["kernels"]["micro_batches"] == 2 and r["kernels"]["gather_weights"] == gather
    share = {"each_use": (0.9, 1.05), "once_per_step": (0.2, 0.3)}[gather]
    assert share[0] * floor["all-gather"] <= traffic["all-gather"] <= share[1] * floor[
        "all-gather"], (traffic, floor)
    assert r["collective_ratio"] <= {"each_use": 1.1, "once_per_step": 0.75}[gather], r
    assert r["eval_collective_ratio"] <= 1.05, r
    assert "FSDP minimum" in stdout and f"x{r['collective_ratio']:.2f}" in stdout
  else:  # replicated weights: gradients all-reduced in float32, nothing to gather
    assert traffic["all-reduce"] > 0 and traffic["all-gather"] == 0
    assert 0.9 < r["collective_ratio"] < 1.2 and r["eval_collective_ratio"] is None, r
  assert r["compute_bound_s"] > 0 and r["collective_bound_s"] > 0 and r["compile_s"] > 0
  assert r["step_time_bound_s"] == max(r["compute_bound_s"], r["collective_bound_s"])
  # v5e sends 200 GB/s a chip (400 bidirectional); v4 300 (600)
  send = {"v5litepod-4": 200e9, "v4-8": 300e9}[topology]
  assert r["collective_bound_s"] == pytest.approx(sum(traffic.values()) / send)
  assert "fits (<= 90% of HBM)" in stdout and topology in stdout


def _tiny_model(**overrides):
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import tiny
  m = tiny.get_config().model
  m.update(overrides)
  return m


def test_a_config_too_big_for_the_slice_exits_1_and_says_why(tmp_path):
  """XLA's attention scores at T 4096 do not fit a v5e chip: exit 1, by how much, the
  largest temporaries (named by the jax operation) and what to change."""
  rc, stdout, stderr = aot("--config", TINY, "--topology", "v5litepod-4",
                           "--config.model.seq_len=4096", "--config.train.global_batch_size=256",
                           "--config.model.attention_impl=xla", "--json",
                           str(tmp_path / "r.json"))
  assert rc == 1, stderr[-2000:]
  assert "does not fit" in stdout and "GiB less per chip" in stdout
  # the [.., T, T] attention scores, named by the jax operation that made them
  scores = [line for line in stdout.splitlines() if "4096,4096]" in line]
  assert "largest temporaries" in stdout and any("/attn/" in line for line in scores)
  assert "--config.train.micro_batches=" in stdout and "remat=dots" in stdout
  assert "attention_impl=splash" in stdout  # the xla attention was asked for
  r = json.loads((tmp_path / "r.json").read_text())
  assert not r["fits"] and r["temp_bytes"] > r["hbm_bytes"] and r["advice"]


@pytest.mark.parametrize("args,needle", [
    (["--config", TINY, "--topology", "v9-8"], "--topology: unknown TPU slice 'v9-8'"),
    (["--config", TINY, "--topology", "v4-12"], "not a slice size"),
    (["--config", TINY], "--topology: missing"),
    (["--config", TINY, "--topology", "v5litepod-4", "--config.model.remat=some"],
     "model.remat: unknown value 'some'"),
    (["--config", TINY, "--topology", "v5litepod-4", "--config.train.global_batch_size=6"],
     "train.global_batch_size: 6 is not divisible by data*fsdp = 4"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
  rc, stdout, stderr = aot(*args)
  assert rc == 2, stderr[-2000:]
  lines = errors(stderr)
  assert len(lines) == 1 and needle in lines[0], stderr[-2000:]


def test_missing_libtpu_names_the_install_command():
  rc, _, stderr = aot("--config", TINY, "--topology", "v5litepod-4",
                      pre="import sys; sys.modules['libtpu'] = None; ")
  assert rc == 2 and "pip install -e '.[tpu]'" in errors(stderr)[0]


def test_list_shows_the_slices():
  rc, stdout, _ = aot("--list")
  assert rc == 0 and "v5litepod-64" in stdout.split() and "v4-64" in stdout.split()


# ---- reading HLO ----
def test_matmul_flops_count_every_loop_trip():
  """A scan of 5 matmuls [64, 32] @ [32, 32]: 5 x 2 x 64 x 32 x 32 FLOPs (XLA's own cost
  analysis counts the loop body once)."""
  def f(x, w):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0]
  x, w = jnp.ones((64, 32)), jnp.ones((32, 32))
  text = jax.jit(f).lower(x, w).compile().as_text()
  assert hlo.matmul_flops(text) == 5 * 2 * 64 * 32 * 32


def test_collective_bytes_by_kind_with_loop_trips():
  """A sum over an axis sharded 8 ways, in a loop of 3: 3 all-reduces of the [16, 32] float32
  partial sums, each 2 x 7/8 of the array per chip on a ring."""
  mesh = Mesh(np.array(jax.devices()[:8]), ("x",))
  x = jax.device_put(jnp.ones((8 * 4, 16, 32)), NamedSharding(mesh, P("x")))

  def f(x):
    return jax.lax.fori_loop(0, 3, lambda i, acc: acc + jnp.sum(x * i, axis=0),
                             jnp.zeros((16, 32)))
  out = NamedSharding(mesh, P())
  text = jax.jit(f, out_shardings=out).lower(x).compile().as_text()
  traffic = hlo.collective_bytes(text, 8)
  assert traffic["all-reduce"] == pytest.approx(3 * 2 * 7 / 8 * 16 * 32 * 4)
  assert traffic["all-gather"] == traffic["reduce-scatter"] == 0


def test_a_collective_split_into_several_fusions_counts_once():
  """A TPU program runs one asynchronous all-gather as several fusions (its start, steps
  interleaved with compute, its end), each holding the same all-gather (one channel_id):
  one transfer per call path. In a loop of 3 and once outside it: 4 gathers of a
  bf16[16, 8] over 8 chips, 7/8 of it each."""
  gather = ("  ROOT %ag{i} = bf16[16,8] all-gather(%p{i}), channel_id=7, "
            "replica_groups=[1,8]<=[8], dimensions={{0}}")
  text = "\n".join([
      *[line for i in (1, 2, 3) for line in (
          f"%fused_{i} (p{i}: bf16[2,8]) -> bf16[16,8] {{",
          f"  %p{i} = bf16[2,8] parameter(0)", gather.format(i=i), "}")],
      "%body (p: (s32[], bf16[2,8])) -> (s32[], bf16[2,8]) {",
      "  %p = (s32[], bf16[2,8]) parameter(0)",
      "  %x = bf16[2,8] get-tuple-element(%p), index=1",
      "  %start = bf16[16,8] fusion(%x), kind=kLoop, calls=%fused_1",
      "  %step = bf16[16,8] fusion(%x), kind=kLoop, calls=%fused_2",
      "  %done = bf16[16,8] fusion(%x), kind=kLoop, calls=%fused_3",
      "  %i = s32[] get-tuple-element(%p), index=0",
      "  ROOT %t = (s32[], bf16[2,8]) tuple(%i, %x)",
      "}",
      "%cond (p: (s32[], bf16[2,8])) -> pred[] {",
      "  %p = (s32[], bf16[2,8]) parameter(0)",
      "  %c = s32[] constant(3)",
      "  %i = s32[] get-tuple-element(%p), index=0",
      "  ROOT %lt = pred[] compare(%i, %c), direction=LT",
      "}",
      "ENTRY %main (x: bf16[2,8]) -> (s32[], bf16[2,8]) {",
      "  %x = bf16[2,8] parameter(0)",
      "  %once = bf16[16,8] fusion(%x), kind=kLoop, calls=%fused_1",
      "  %again = bf16[16,8] fusion(%x), kind=kLoop, calls=%fused_2",
      "  %z = s32[] constant(0)",
      "  %t = (s32[], bf16[2,8]) tuple(%z, %x)",
      "  ROOT %w = (s32[], bf16[2,8]) while(%t), condition=%cond, body=%body",
      "}"])
  assert hlo.collective_bytes(text, 8)["all-gather"] == pytest.approx(4 * 16 * 8 * 2 * 7 / 8)


def test_hlo_parser_keeps_attributes_that_span_lines():
  """A kernel's JSON config may hold newlines (Pallas calls on TPU); a line '}}, ...' must
  not end the computation, or the rest of a loop body goes unseen."""
  text = "\n".join([
      "%body (p: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {",
      "  %p = (s32[], f32[8,8]) parameter(0)",
      "  %a = f32[8,8] get-tuple-element(%p), index=1",
      '  %k = f32[8,8] custom-call(%a), custom_call_target="tpu_custom_call", backend_config={"x":"{',
      '}}, metadata={op_name="kernel"}',
      "  %d = f32[8,8] dot(%k, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}",
      "  %i = s32[] get-tuple-element(%p), index=0",
      "  ROOT %t = (s32[], f32[8,8]) tuple(%i, %d)",
      "}",
      "%cond (p: (s32[], f32[8,8])) -> pred[] {",
      "  %p = (s32[], f32[8,8]) parameter(0)",
      "  %c = s32[] constant(7)",
      "  %i = s32[] get-tuple-element(%p), index=0",
      "  ROOT %lt = pred[] compare(%i, %c), direction=LT",
      "}",
      "ENTRY %main (x: f32[8,8]) -> (s32[], f32[8,8]) {",
      "  %x = f32[8,8] parameter(0)",
      "  %z = s32[] constant(0)",
      "  %t = (s32[], f32[8,8]) tuple(%z, %x)",
      "  ROOT %w = (s32[], f32[8,8]) while(%t), condition=%cond, body=%body",
      "}"])
  assert hlo.matmul_flops(text) == 7 * 2 * 8 * 8 * 8


# ---- kernels follow the platform compiled for ----
def test_model_kernels_follow_the_platform_not_the_host():
  """On this CPU host: built for 'tpu' the model takes XLA's dense layers, the chunked loss
  and splash attention; built for the mesh of CPU devices, the CPU fast paths as before."""
  from wsdjax.runtime import sharding
  from wsdjax.model.kernels import attention, fast_dense, fused_loss
  cfg = model_lib.ModelConfig(seq_len=256, d_model=128, n_heads=2, n_kv_heads=2)
  q = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.float32)
  tpu = model_lib.build_model(cfg, "tpu").config
  assert (attention.resolve("auto", q, tpu.platform), fast_dense.resolve("auto", tpu.platform),
          fused_loss.resolve("auto", "auto", tpu.platform)) == ("splash", "xla", "chunked")
  cpu_mesh = Mesh(np.array(jax.devices()).reshape(-1, 1, 1), sharding.MESH_AXES)
  cpu = model_lib.build_model(cfg, sharding.platform_of(cpu_mesh)).config
  assert (attention.resolve("auto", q, cpu.platform), fast_dense.resolve("auto", cpu.platform),
          fused_loss.resolve("auto", "auto", cpu.platform)) == ("blocked", "cpu_dw", "chunked")
  with pytest.raises(ValueError, match="platform: unknown value"):
    model_lib.build_model(cfg, "npu")


# ---- libtpu stays quiet on a host without TPU chips ----
def test_cpu_only_without_tpu(tmp_path):
  env = {}
  assert host.cpu_only_without_tpu(env, sys_root=str(tmp_path)) is True
  assert env == {"JAX_PLATFORMS": "cpu"}
  env = {"JAX_PLATFORMS": "tpu"}
  assert host.cpu_only_without_tpu(env, sys_root=str(tmp_path)) is False
  assert env == {"JAX_PLATFORMS": "tpu"}
  vendor = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:00:04.0" / "vendor"
  vendor.parent.mkdir(parents=True)
  vendor.write_text("0x1ae0\n")  # a TPU chip on PCI
  assert host.has_tpu_chips(str(tmp_path))
  env = {}
  assert host.cpu_only_without_tpu(env, sys_root=str(tmp_path)) is False and env == {}


# compile_for_slice turns jax's persistent cache off; the tests' cache may be in use already
@pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache")
def test_remat_policies_change_what_the_tpu_step_recomputes_and_keeps():
  """model.remat compiled for a v5litepod-4: 'dots' keeps the weight matmuls' and the
  attention kernel's outputs and recomputes only elementwise work (the matmul and kernel
  FLOPs of 'none'); 'dots_offload' the same, its kept outputs in host memory (host bytes,
  which no other has); 'full' recomputes the matmuls and the kernel's forward too."""
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import tiny

  from wsdjax.runtime.tpu import aot as tpu_aot
  tpu_slice = slices.lookup("v5litepod-4")
  reports = {}
  for policy in ("none", "dots", "dots_offload", "full"):
    cfg = tiny.get_config()
    cfg.model.seq_len, cfg.train.global_batch_size = 256, 32
    cfg.model.remat = policy
    reports[policy] = tpu_aot.compile_for_slice(cfg, tpu_slice)
  flops = {p: r.xla_flops for p, r in reports.items()}
  assert flops["none"] == flops["dots"] == flops["dots_offload"] < flops["full"], flops
  host = {p: r.host_bytes for p, r in reports.items()}
  assert host["dots_offload"] > 0 and host["none"] == host["dots"] == host["full"] == 0, host
  assert all(r.fits for r in reports.values())


WINDOWED_LOOP = """\
HloModule windowed

%cond (p: (s32[], f32[8,8])) -> pred[] {
  %p = (s32[], f32[8,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(16)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (q: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %q = (s32[], f32[8,8]) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %x = f32[8,8] get-tuple-element(%q), index=1
  %y = f32[8,8] dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %two = s32[] constant(2)
  %next = s32[] add(%j, %two)
  ROOT %t = (s32[], f32[8,8]) tuple(%next, %y)
}

ENTRY %main (a: f32[8,8]) -> (s32[], f32[8,8]) {
  %a = f32[8,8] parameter(0)
  %start = s32[] constant(4)
  %init = (s32[], f32[8,8]) tuple(%start, %a)
  ROOT %w = (s32[], f32[8,8]) while(%init), condition=%cond, body=%body
}
"""


def test_loop_trips_follow_the_start_and_the_step():
  """XLA's windowed einsums (FSDP matmuls on TPU) loop `i += 2` while `i < N`: a loop from
  4 to 16 in steps of 2 runs 6 times, not 16."""
  assert hlo.matmul_flops(WINDOWED_LOOP) == 6 * 2 * 8 * 8 * 8


def _splash_call(q_type: str) -> str:
  return f"""\
HloModule splash

ENTRY %main (q: {q_type}) -> {q_type} {{
  %q = {q_type} parameter(0)
  ROOT %splash_mha_fwd_residuals.1 = {q_type} custom-call(%q, %q, %q), \
custom_call_target="tpu_custom_call", operand_layout_constraints={{s8[1,1,1]{{2,1,0}}, \
{q_type}{{2,1,0}}, {q_type}{{2,1,0}}, {q_type}{{2,1,0}}}}, backend_config="k"
}}
"""


def test_splash_flops_with_and_without_a_batch_axis():
  """The kernel's q is [B, H, T, Dh], or [H, T, Dh] when each call has one sequence (a
  micro-batch of one sequence a chip): the forward's 2 matmuls of 2 B H T^2 Dh, with a
  block of T (every score block visited) or T/2 (3/4 of them)."""
  one = 2 * 2 * 1 * 2 * 256 * 256 * 64
  assert hlo.splash_flops(_splash_call("bf16[2,256,64]"), 256) == one
  assert hlo.splash_flops(_splash_call("bf16[3,2,256,64]"), 256) == 3 * one
  assert hlo.splash_flops(_splash_call("bf16[2,256,64]"), 128) == 0.75 * one

"""Tests of wsdjax.bench: it runs the real trainer pieces on a tiny config and reports
every quantity; forking copies nothing; bad command lines are one-line errors (exit 2).
Speed targets are the benchmark's output (docs/performance.md), not tested here."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, one_device_mesh, subprocess_env

from wsdjax.training import benchmark as bench


def test_bench_runs_tiny_and_reports_everything(tiny_config, tmp_path):
  tiny_config.train.log_every = 1000  # logging would measure the CPU peak (slow here)
  r = bench.run(tiny_config, steps=2, warmup=0, saves=1, workdir=str(tmp_path / "w"),
                mesh=one_device_mesh(), peak_flops=1e10, profile_dir=str(tmp_path / "prof"))
  assert r["compile_s"] > 0 and r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
  assert len(r["step_s_all"]) == 2 and r["tokens_per_step"] == 8 * 32
  assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 2 and r["peak_flops"] > 0
  assert r["model_flops_per_token"] > 0 and math.isfinite(r["train_loss"])
  assert 0 <= r["host_share"] < 1 and "ckpt_stall_s" in r and r["ckpt_save_call_s"] > 0
  assert math.isfinite(r["ckpt_stall_mean_s"])
  assert r["ckpt_compression"] == "none"  # 'auto' on the CPU backend
  # The integrity check's costs: the SHA-256 of a save's files, their check, the restore.
  assert r["ckpt_bytes"] > 0 and r["ckpt_checksum_s"] > 0 and r["ckpt_verify_s"] > 0
  assert r["ckpt_restore_s"] > 0
  # Forking a branch copies nothing: every buffer is shared, main survives its first step.
  assert r["fork_copy_bytes"] == 0
  assert r["fork_shared_buffers"] == r["state_buffers"] > 0
  assert r["fork_main_intact"] and r["fork_first_step_extra_bytes"] <= 0
  assert r["peak_memory_bytes"] > 0 and r["compiled_bytes"]["argument"] > 0
  # --profile: the ops of XLA:CPU's threads that took the most time, largest first.
  top = r["profile_top"]
  assert top and all(a["ms_per_step"] >= b["ms_per_step"] for a, b in zip(top, top[1:]))
  assert 0 < sum(op["share"] for op in top) <= 1 + 1e-9
  assert r["profile_ops"][:len(top)] == top and abs(math.fsum(op["share"] for op in
                                                          r["profile_ops"]) - 1) < 1e-6
  assert math.isclose(sum(r["profile_ms_by_kind"].values()),
                      math.fsum(op["ms_per_step"] for op in r["profile_ops"]))
  text = bench.table(r)
  for word in ("compile", "step time", "tokens/s", "MFU", "host time", "checkpoint", "fork",
               "memory", "top ops", "device time", "Orbax, compression none",
               "integrity", "SHA-256 of its files"):
    assert word in text
  assert r["ckpt_stall_se_s"] is None and "+-" not in text  # one save: no standard error
  assert "+- 0.050 s" in bench.table(dict(r, ckpt_stall_se_s=0.05))
  json.dumps(r)  # JSON-able as written by --json


def test_the_stall_has_a_standard_error_from_two_saves_on():
  assert bench._standard_error([0.1]) is None
  assert math.isclose(bench._standard_error([0.1, 0.2, 0.3]), 0.1 / math.sqrt(3))


def test_trace_top_sums_device_ops_per_step(tmp_path):
  """A GPU-shaped Perfetto trace: only the '/device:' process's ops count, grouped by
  their HLO op where the event names one, per profiled step."""
  import gzip
  events = [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
      {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "thread_name", "pid": 2, "tid": 7, "args": {"name": "Stream #7"}},
      {"ph": "X", "pid": 1, "tid": 1, "name": "PjitFunction(step)", "dur": 9000.0},
      {"ph": "X", "pid": 2, "tid": 7, "name": "sm90_gemm", "dur": 3000.0,
       "args": {"hlo_op": "dot.1"}},
      {"ph": "X", "pid": 2, "tid": 7, "name": "sm90_gemm", "dur": 1000.0,
       "args": {"hlo_op": "dot.2"}},
      {"ph": "X", "pid": 2, "tid": 7, "name": "loop_fusion", "dur": 2000.0},
      {"ph": "X", "pid": 2, "tid": 7, "name": "sm90_gemm", "dur": 3000.0,
       "args": {"hlo_op": "dot.1"}},
  ]
  d = tmp_path / "plugins" / "profile" / "run"
  d.mkdir(parents=True)
  with gzip.open(d / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  top = bench.trace_top(str(tmp_path), steps=2)
  assert [(o["op"], o["kernel"], o["ms_per_step"]) for o in top] == [
      ("dot.1", "sm90_gemm", 3.0), ("loop_fusion", "loop_fusion", 1.0),
      ("dot.2", "sm90_gemm", 0.5)]
  assert math.isclose(top[0]["share"], 6 / 9)
  assert bench.trace_top(str(tmp_path / "none"), steps=2) == []
  # The split of device time: cuBLAS/Triton gemms, cuDNN attention, everything else.
  ops = top + [{"op": "custom-call.3", "kernel": "cudnn_generated_fort_native_sdpa_sm90",
                "ms_per_step": 0.25, "share": 0.0}]
  assert [bench.op_kind(o) for o in ops] == ["matmul", "other", "matmul", "attention"]
  assert bench.time_by_kind(ops) == {"matmul": 3.5, "attention": 0.25, "other": 1.0}


def test_cli_bad_arguments_are_one_line_errors(tmp_path):
  cases = {
      "missing config": [],
      "no such file": ["--config", str(tmp_path / "nope.py")],
      "zero steps": ["--config", "configs/tiny.py", "--steps", "0"],
      "unknown key": ["--config", "configs/tiny.py", "--config.model.nope=1"],
      "bad value": ["--config", "configs/tiny.py", "--config.model.dense_impl=fast"],
      "json dir": ["--config", "configs/tiny.py", "--json", str(tmp_path / "a" / "b.json")],
  }
  procs = {name: subprocess.Popen([sys.executable, "-m", "wsdjax.bench", *args], cwd=REPO,
                                  env=subprocess_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name, args in cases.items()}
  for name, p in procs.items():
    out, err = p.communicate(timeout=120)
    lines = [l for l in err.splitlines() if l.startswith("wsdjax: ")]
    assert p.returncode == 2, (name, out, err)
    assert len(lines) == 1, (name, err)
  assert not os.path.exists(tmp_path / "a")


def test_bf16_peak_table_by_device_kind():
  """MFU's denominator for the device kinds jax reports (a more specific name first)."""
  from wsdjax.training import metrics
  cases = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12,
           "NVIDIA H100 NVL": 835e12, "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
           "NVIDIA A10G": 125e12, "NVIDIA L4": 121e12, "NVIDIA L40S": 362e12,
           "Tesla V100-SXM2-16GB": 15.7e12, "Tesla T4": 8.1e12, "TPU v4": 275e12,
           "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6 lite": 918e12,
           "TPU v2": 22.5e12, "TPU v3": 61.5e12}  # v2/v3: a jax device is one TensorCore
  for kind, peak in cases.items():
    assert metrics.table_peak_flops(kind) == peak, kind
  assert metrics.table_peak_flops("cpu") is None


def test_data_mode_reports_reader_and_prepare_throughput():
  from wsdjax.data import throughput
  r = throughput.run(steps=3, copies=1, docs=300, tokenizers=("bytes", "huggingface"),
                     workers=(1, 2), seq_len=256)
  assert [(p["tokenizer"], p["workers"]) for p in r["prepare"]] == [
      ("bytes", 1), ("bytes", 2), ("huggingface", 1), ("huggingface", 2)]
  for row in r["prepare"]:
    assert row["tokens"] > 0 and row["tokens_per_s"] > 0 and row["tokens_per_cpu_s"] > 0
  # Every worker count tokenizes the same corpus into the same number of tokens.
  assert r["prepare"][0]["tokens"] == r["prepare"][1]["tokens"]
  read = r["reader"]
  assert read["tokens"] == 3 * 64 * 257 and read["times_need"] == pytest.approx(
      read["tokens_per_cpu_s"] / 0.7e6)
  text = throughput.table(r)
  assert text.startswith("reader    64 rows x 257 tokens a step, 3 steps: ")
  assert "prepare   huggingface" in text and "from 1 to 2" in text

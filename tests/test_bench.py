"""Tests of wsdjax.bench: it runs the real trainer pieces on a tiny config and reports
every quantity; forking copies nothing; bad command lines are one-line errors (exit 2).
Speed targets are the benchmark's output (docs/performance.md), not tested here."""

import json
import math
import os
import subprocess
import sys

from conftest import REPO, one_device_mesh, subprocess_env

from wsdjax import bench


def test_bench_runs_tiny_and_reports_everything(tiny_config, tmp_path):
  tiny_config.train.log_every = 1000  # logging would measure the CPU peak (slow here)
  r = bench.run(tiny_config, steps=2, warmup=0, saves=1, workdir=str(tmp_path),
                mesh=one_device_mesh(), peak_flops=1e10)
  assert r["compile_s"] > 0 and r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
  assert len(r["step_s_all"]) == 2 and r["tokens_per_step"] == 8 * 32
  assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 2 and r["peak_flops"] > 0
  assert r["model_flops_per_token"] > 0 and math.isfinite(r["train_loss"])
  assert 0 <= r["host_share"] < 1 and "ckpt_stall_s" in r and r["ckpt_save_call_s"] > 0
  # Forking a branch copies nothing: every buffer is shared, main survives its first step.
  assert r["fork_copy_bytes"] == 0
  assert r["fork_shared_buffers"] == r["state_buffers"] > 0
  assert r["fork_main_intact"] and r["fork_first_step_extra_bytes"] <= 0
  assert r["peak_memory_bytes"] > 0 and r["compiled_bytes"]["argument"] > 0
  text = bench.table(r)
  for word in ("compile", "step time", "tokens/s", "MFU", "host time", "checkpoint", "fork",
               "memory"):
    assert word in text
  json.dumps(r)  # JSON-able as written by --json


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

"""launch/tpu_vm.py against a fake `gcloud` on PATH that records its arguments (nothing
reaches the network), launch/local.py's plumbing, and wsdjax.runtime.distributed's explicit
coordinator settings (without starting the runtime). Detection of TPU slices, GKE and
Cloud TPU VMs: tests/unit/test_distributed_env.py."""

import json
import os
import subprocess
import sys
import shlex
import tarfile
import time

import pytest

from conftest import REPO, run_cli, subprocess_env
from wsdjax.runtime import distributed

TPU_VM = os.path.join(REPO, "launch", "tpu_vm.py")
FAKE_GCLOUD = """#!{python}
import json, os, shutil, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:5] == ["compute", "tpus", "tpu-vm", "scp"]:  # keep what would be copied
  shutil.copy(sys.argv[5], os.environ["FAKE_GCLOUD_LOG"] + ".scp")
if sys.argv[1:5] == ["compute", "tpus", "queued-resources", "describe"]:  # granted
  print(json.dumps({{"state": {{"state": os.environ.get("FAKE_QR_STATE", "ACTIVE")}}}}))
if sys.argv[1:5] == ["compute", "tpus", "tpu-vm", "describe"]:  # a TPU VM of N workers
  workers = int(os.environ.get("FAKE_TPU_WORKERS", "8"))
  print(json.dumps({{"acceleratorType": "v4-64", "state": "READY", "networkEndpoints": [
      {{"ipAddress": f"10.0.0.{{i}}", "port": 8470}} for i in range(workers)]}}))
  sys.exit(int(os.environ.get("FAKE_GCLOUD_STATUS", "0")))
"""


@pytest.fixture
def gcloud(tmp_path):
  """(run tpu_vm.py with args -> CompletedProcess, recorded gcloud calls -> list)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "gcloud"
  fake.write_text(FAKE_GCLOUD.format(python=sys.executable))
  fake.chmod(0o755)
  log = tmp_path / "gcloud.log"
  env = subprocess_env()
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_GCLOUD_LOG=str(log))
  for key in ("TPU_NAME", "TPU_ZONE", "TPU_PROJECT"):
    env.pop(key, None)

  def run(*args, launcher=(sys.executable, TPU_VM), **extra_env):
    return subprocess.run([*launcher, *args], cwd=REPO, env=env | extra_env,
                          capture_output=True, text=True, timeout=60)

  def calls():
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  return run, calls, log


BASE = ["--name", "wsd", "--zone", "us-central2-b", "--project", "proj"]
TAIL = ["--zone=us-central2-b", "--project=proj"]
VM = ["compute", "tpus", "tpu-vm"]
QR = ["compute", "tpus", "queued-resources"]


def test_create_run_logs_stop_delete(gcloud):
  run, calls, _ = gcloud
  for args in (["create", "--accelerator-type", "v4-64", "--spot"],
               ["run", "--config", "configs/paper_0.1b.py", "--workdir", "gs://b/run",
                "--config.schedule.budgets=(100,200)"],
               ["logs", "--worker", "3", "--lines", "20"], ["stop"], ["delete"]):
    out = run(*BASE, *args)
    assert out.returncode == 0, out.stderr
  create, waited, describe, start, logs, stop, qr_describe, delete = calls()
  assert create == QR + ["create", "wsd", "--node-id=wsd", "--accelerator-type=v4-64",
                         "--runtime-version=tpu-ubuntu2204-base", "--spot"] + TAIL
  assert waited == QR + ["describe", "wsd", "--format=json"] + TAIL
  assert describe == VM + ["describe", "wsd", "--format=json"] + TAIL
  assert start[:6] == VM + ["ssh", "wsd", "--worker=all"] and start[7:] == TAIL
  remote = start[6].removeprefix("--command=")
  train = ".venv/bin/python -m wsdjax.train --config=configs/paper_0.1b.py " \
          "--workdir=gs://b/run '--config.schedule.budgets=(100,200)'"
  keeper = (f"{train} & echo $! > $HOME/wsdjax_logs/train.pid; wait $!; "
            "echo $? > $HOME/wsdjax_logs/train.status")
  assert ("cd ~/wsdjax && rm -f ~/wsdjax_logs/train.pid ~/wsdjax_logs/train.status && "
          "date -u +%FT%TZ > ~/wsdjax_logs/train.started && (WSDJAX_TPU_WORKERS=8 nohup sh -c "
          f"{shlex.quote(keeper)} >> ~/wsdjax_logs/train.log 2>&1 < /dev/null &)" in remote)
  assert logs == VM + ["ssh", "wsd", "--worker=3",
                       "--command=tail -n 20 ~/wsdjax_logs/train.log"] + TAIL
  assert stop[6].startswith("--command=if [ -f ~/wsdjax_logs/train.pid ]; then kill -TERM")
  assert stop[5] == "--worker=all"
  assert qr_describe == waited  # a queued resource of this name: delete it with its node
  assert delete == QR + ["delete", "wsd", "--force", "--quiet"] + TAIL
  assert "queued resource wsd: ACTIVE (waiting 0h00m00s)" in run(
      *BASE, "create", "--accelerator-type", "v4-8").stdout


def test_run_script_keeps_the_trainers_pid_and_exit_status(tmp_path):
  """The `run` command, played in a shell here (HOME = tmp_path, a stand-in trainer):
  train.pid is the trainer's, train.status its exit status, the log its output."""
  sys.path.insert(0, os.path.join(REPO, "launch"))
  import tpu_vm
  (tmp_path / "wsdjax" / ".venv" / "bin").mkdir(parents=True)
  fake = tmp_path / "wsdjax" / ".venv" / "bin" / "python"
  fake.write_text("#!/bin/sh\necho \"trainer $WSDJAX_TPU_WORKERS $*\"; exit 3\n")
  fake.chmod(0o755)
  env = dict(os.environ, HOME=str(tmp_path))
  script = tpu_vm.train_script("configs/tiny.py", "gs://b/r", ["--config.seed=(1,2)"], 2)
  subprocess.run(["bash", "-c", script], env=env, check=True, timeout=30)
  logs = tmp_path / "wsdjax_logs"
  for _ in range(100):
    if (logs / "train.status").exists():
      break
    time.sleep(0.05)
  assert (logs / "train.status").read_text().strip() == "3"
  assert (logs / "train.log").read_text() == (
      "trainer 2 -m wsdjax.train --config=configs/tiny.py --workdir=gs://b/r "
      "--config.seed=(1,2)\n")
  status = subprocess.run(["bash", "-c", tpu_vm.status_script()], env=env, text=True,
                          capture_output=True, check=True).stdout
  assert status.split()[0] == tpu_vm.WORKER_MARK and status.split()[2:] == ["exited", "3"]


def test_setup_copies_checkout_and_installs_tpu_extra(gcloud):
  run, calls, log = gcloud
  out = run(*BASE, "setup")
  assert out.returncode == 0, out.stderr
  scp, unpack, install = calls()
  assert scp[:4] == VM + ["scp"] and scp[5:] == ["wsd:~/wsdjax-src.tgz", "--worker=all"] + TAIL
  assert unpack[6] == ("--command=rm -rf ~/wsdjax && mkdir -p ~/wsdjax && "
                       "tar -xzf ~/wsdjax-src.tgz -C ~/wsdjax")
  assert "python3.11 -m venv .venv" in install[6]
  assert "pip install -q -e '.[tpu]' gcsfs google-cloud-storage" in install[6]
  with tarfile.open(str(log) + ".scp") as tar:
    names = set(tar.getnames())
  assert {"pyproject.toml", "wsdjax/train.py", "launch/tpu_vm.py"} <= names
  assert not any(n.startswith((".venv/", ".git/")) for n in names)


def test_setup_clone_and_dry_run_prints_without_running(gcloud):
  run, calls, _ = gcloud
  out = run(*BASE, "--dry-run", "setup", "--repo", "https://example.com/wsdjax.git",
            "--ref", "v1")
  assert out.returncode == 0, out.stderr
  assert calls() == []  # nothing ran
  lines = out.stdout.splitlines()
  assert lines[0] == ("gcloud compute tpus tpu-vm ssh wsd --worker=all '--command=rm -rf "
                      "~/wsdjax && git clone -q https://example.com/wsdjax.git ~/wsdjax && "
                      "git -C ~/wsdjax checkout -q v1' --zone=us-central2-b --project=proj")
  out = run("--name", "n", "--zone", "z", "--dry-run", "create", "--accelerator-type",
            "v5litepod-64")
  assert out.stdout.splitlines() == [
      "gcloud compute tpus queued-resources create n --node-id=n "
      "--accelerator-type=v5litepod-64 --runtime-version=v2-alpha-tpuv5-lite --zone=z",
      "# then every 60 s until its state is ACTIVE:",
      "gcloud compute tpus queued-resources describe n --format=json --zone=z"]
  assert calls() == []


RUN = ["run", "--config", "configs/paper_0.1b.py", "--workdir", "gs://b/run"]


def worker_env(ssh_call: list[str]) -> dict:
  """The environment assignments before `nohup` in a `run` ssh command (what every worker
  gets), as a dict."""
  remote = ssh_call[6].removeprefix("--command=")
  words = remote[remote.index("(") + 1:remote.index(" nohup ")].split()
  return dict(w.split("=", 1) for w in words)


@pytest.mark.parametrize("workers, multiprocess", [(1, False), (2, True), (16, True)])
def test_run_tells_every_worker_the_slice_size(gcloud, workers, multiprocess):
  """`run` reads the worker count from `gcloud ... describe` and sets WSDJAX_TPU_WORKERS in
  the one command every worker runs (--worker=all); wsdjax.runtime.distributed then starts
  jax.distributed exactly on a multi-host slice, without TPU_WORKER_HOSTNAMES or metadata."""
  run, calls, _ = gcloud
  out = run(*BASE, *RUN, FAKE_TPU_WORKERS=str(workers))
  assert out.returncode == 0, out.stderr
  describe, start = calls()
  assert describe[3] == "describe" and start[3:6] == ["ssh", "wsd", "--worker=all"]
  env = worker_env(start)
  assert env == {"WSDJAX_TPU_WORKERS": str(workers)}

  def no_metadata(key):
    raise AssertionError(f"metadata queried for {key}")

  assert distributed.is_multiprocess_environment(
      env, metadata=no_metadata, on_tpu_vm=True) is multiprocess


def test_run_dry_run_through_tpu_vm_sh(gcloud):
  """launch/tpu_vm.sh --dry-run run prints the exact command every worker gets."""
  run, calls, _ = gcloud
  sh = ("bash", os.path.join(REPO, "launch", "tpu_vm.sh"))
  out = run(*BASE, "--dry-run", *RUN, "--workers", "4", "--config.seed=3", launcher=sh,
            PYTHON=sys.executable)
  assert out.returncode == 0, out.stderr
  (line,) = out.stdout.splitlines()
  assert line.startswith("gcloud compute tpus tpu-vm ssh wsd --worker=all '--command=mkdir -p "
                         "~/wsdjax_logs && cd ~/wsdjax && rm -f ~/wsdjax_logs/train.pid ")
  assert ("(WSDJAX_TPU_WORKERS=4 nohup sh -c '\"'\"'.venv/bin/python -m wsdjax.train "
          "--config=configs/paper_0.1b.py --workdir=gs://b/run --config.seed=3 & ") in line
  assert line.endswith("' --zone=us-central2-b --project=proj")
  # Without --workers the count comes from the describe the dry run prints, not runs.
  out = run(*BASE, "--dry-run", *RUN, launcher=sh, PYTHON=sys.executable)
  assert out.returncode == 0, out.stderr
  describe, note, ssh = out.stdout.splitlines()
  assert describe == ("gcloud compute tpus tpu-vm describe wsd --format=json "
                      "--zone=us-central2-b --project=proj")
  assert note.startswith("# <workers>: ") and "(WSDJAX_TPU_WORKERS=<workers> nohup " in ssh
  assert calls() == []


@pytest.mark.parametrize("args, message", [
    (RUN[:-1] + ["/tmp/w", "--local-workdir"], "wsdjax: --local-workdir: the TPU VM has 8 "
     "workers"),
    (RUN + ["--workers", "0"], "wsdjax: --workers: 0 is not a count >= 1"),
])
def test_run_refuses(gcloud, args, message):
  run, _, _ = gcloud
  out = run(*BASE, *args)
  assert out.returncode == 2 and out.stderr.startswith(message), out.stderr
  assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    ({"FAKE_GCLOUD_STATUS": "1"}, "wsdjax: gcloud: describe wsd failed with status 1"),
    ({"FAKE_TPU_WORKERS": "0"}, "wsdjax: gcloud: TPU VM wsd lists no workers (state READY)"),
])
def test_run_without_a_worker_count_starts_nothing(gcloud, extra, message):
  run, calls, _ = gcloud
  out = run(*BASE, *RUN, **extra)
  assert out.returncode == 2 and out.stderr.startswith(message), out.stderr
  assert [c[3] for c in calls()] == ["describe"]  # no ssh


@pytest.mark.parametrize("args, message", [
    (["--name", "n", "--zone", "z", "run", "--config", "c.py", "--workdir", "/tmp/w"],
     "wsdjax: --workdir: '/tmp/w' is not on GCS"),
    (["--name", "n", "stop"], "wsdjax: --zone: missing"),
    (["--zone", "z", "stop"], "wsdjax: --name: missing"),
    (["--name", "n", "--zone", "z", "stop", "--config.x=1"], "wsdjax: arguments: unexpected"),
    (["--name", "n", "--zone", "z", "create", "--accelerator-type", "x9-8"],
     "wsdjax: --version: no default image"),
])
def test_bad_input_is_one_line_exit_2(gcloud, args, message):
  run, calls, _ = gcloud
  out = run(*args)
  assert out.returncode == 2 and out.stderr.startswith(message), out.stderr
  assert len(out.stderr.strip().splitlines()) == 1 and calls() == []


def test_local_launcher_environment_and_arguments():
  sys.path.insert(0, os.path.join(REPO, "launch"))
  try:
    import local
  finally:
    sys.path.pop(0)
  env = local.process_env({"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8",
                           "JAX_PROCESS_ID": "7"}, 1, 2, 4, 1234, heartbeat_s=10)
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
  assert (env["JAX_COORDINATOR_ADDRESS"], env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"],
          env["JAX_HEARTBEAT_TIMEOUT"], env["JAX_PLATFORMS"]) == (
              "127.0.0.1:1234", "2", "1", "10", "cpu")
  single = local.process_env({"JAX_PROCESS_ID": "7"}, 0, 1, 8, 1234)
  assert "JAX_COORDINATOR_ADDRESS" not in single and "JAX_PROCESS_ID" not in single
  gpu = local.process_env({}, 1, 2, 4, 1234, platform="gpu")
  assert gpu["CUDA_VISIBLE_DEVICES"] == "4,5,6,7" and "JAX_PLATFORMS" not in gpu
  args, rest = local.parse(["2", "configs/tiny.py", "/w", "--devices", "4",
                            "--config.seed=3"])
  assert (args.processes, args.devices, rest) == (2, 4, ["--config.seed=3"])
  assert 0 < local.free_port() < 65536
  out = subprocess.run([sys.executable, os.path.join(REPO, "launch", "local.py"), "0",
                        "configs/tiny.py", "/tmp/w"], capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 2 and out.stderr.startswith("wsdjax: N: must be >= 1")


def test_explicit_coordinator_settings():
  # A one-process "job" never starts the runtime.
  assert distributed.initialize(env={"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1",
                                     "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is False
  with pytest.raises(ValueError, match="--num_processes"):
    distributed.initialize(coordinator_address="127.0.0.1:1", env={})


def test_train_cli_refuses_incomplete_distributed_flags(tmp_path):
  out = run_cli("wsdjax.train", "--config=configs/tiny.py", f"--workdir={tmp_path}",
                "--coordinator_address=127.0.0.1:1", timeout=120)
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().startswith("wsdjax: distributed: a coordinator address needs")


FAKE_BENCH = r"""#!/usr/bin/env python3
# Stands in for python in launch/gpu_bench.sh: `-m wsdjax.bench ...` records its arguments
# and XLA_FLAGS, writes a bench JSON and a table line; anything else runs the real python.
import json, os, sys
if sys.argv[1:3] != ["-m", "wsdjax.bench"]:
  os.execv(os.environ["REAL_PYTHON"], [os.environ["REAL_PYTHON"], *sys.argv[1:]])
args = sys.argv[3:]
out = args[args.index("--json") + 1]
with open(os.environ["FAKE_BENCH_LOG"], "a") as f:
  f.write(json.dumps({"args": args, "xla_flags": os.environ.get("XLA_FLAGS")}) + "\n")
json.dump({"step_s_median": 0.25, "tokens_per_s": 5e5, "mfu": 0.43,
           "peak_memory_bytes": 2**30, "compile_s": 9.0, "ckpt_stall_share": 0.1}, open(out, "w"))
print("config       fake")
print("step time    median 0.250 s")
"""


def test_gpu_bench_runs_each_variant_in_its_own_process(tmp_path):
  """launch/gpu_bench.sh: a variant's --config/--profile flags go to the bench, its
  XLA_FLAGS=... (spaces kept) to that process alone; a JSON per variant and a summary."""
  fake = tmp_path / "python"
  fake.write_text(FAKE_BENCH)
  fake.chmod(0o755)
  log = tmp_path / "calls.jsonl"
  env = subprocess_env() | {"PYTHON": str(fake), "REAL_PYTHON": sys.executable,
                            "FAKE_BENCH_LOG": str(log), "STEPS": "3", "SAVES": "0"}
  env.pop("XLA_FLAGS")
  out = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "gpu_bench.sh"), str(tmp_path / "out"),
       "a:--config.model.swiglu_impl=xla,XLA_FLAGS=--xla_x=1 --xla_y=2,--profile=/tmp/p", "b"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  assert [c["xla_flags"] for c in calls] == ["--xla_x=1 --xla_y=2", None]
  a, b = (c["args"] for c in calls)
  assert a[:4] == ["--config", "configs/gpt2_124m.py", "--steps", "3"]
  assert a[-2:] == ["--config.model.swiglu_impl=xla", "--profile=/tmp/p"]
  assert b[-2:] == ["--json", str(tmp_path / "out" / "b.json")]
  assert "== a (" in out.stdout and "exit 0" in out.stdout
  summary = out.stdout[out.stdout.index("variant"):].splitlines()
  assert [row.split()[0] for row in summary[1:]] == ["a", "b"]
  assert summary[1].split()[1:4] == ["0.250", "500,000", "43.0"]

  # No variants: the ones docs/performance.md reports, each with its flags.
  log.unlink()
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu_bench.sh"),
                        str(tmp_path / "defaults")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  calls = [json.loads(line)["args"] for line in log.read_text().splitlines()]
  names = [os.path.basename(c[c.index("--json") + 1])[:-5] for c in calls]
  assert names == ["base", "scan_mb2", "xla_attn", "plain_loss", "xla_swiglu"]
  assert [c[c.index("--json") + 2:] for c in calls] == [
      [], ["--config.model.layer_loop=scan", "--config.train.micro_batches=2"],
      ["--config.model.attention_impl=xla", "--config.train.micro_batches=4"],
      ["--config.model.loss_impl=plain"], ["--config.model.swiglu_impl=xla"]]


def test_prepare_gives_every_worker_its_share(gcloud):
  """`prepare` runs python -m wsdjax.prepare on each worker with its own --shard I/N (the
  other flags passed through), detached, logging to prepare.log; the last share joins."""
  run, calls, _ = gcloud
  out = run(*BASE, "prepare", "--input", "gs://b/corpus/*.parquet", "--output", "gs://b/store",
            "--tokenizer", "sentencepiece", "--vocab_size", "32000", FAKE_TPU_WORKERS="4")
  assert out.returncode == 0, out.stderr
  describe, *ssh = calls()
  assert describe[3] == "describe" and len(ssh) == 4
  for i, call in enumerate(ssh):
    assert call[3:6] == ["ssh", "wsd", f"--worker={i}"]
    remote = call[6].removeprefix("--command=")
    assert (".venv/bin/python -m wsdjax.prepare '--input=gs://b/corpus/*.parquet' "
            "--output=gs://b/store --tokenizer sentencepiece --vocab_size 32000 "
            f"--shard={i}/4 >> ~/wsdjax_logs/prepare.log 2>&1 < /dev/null &") in remote
  out = run(*BASE, "logs", "--log", "prepare")
  assert calls()[-1][6] == "--command=tail -n 50 ~/wsdjax_logs/prepare.log"
  for args, message in ((["--output", "/local/store"], "--output: '/local/store' is not on GCS"),
                        (["--output", "gs://b/s", "--shard", "1/2"], "--shard: set per worker")):
    bad = run(*BASE, "prepare", "--input", "gs://b/x", *args, FAKE_TPU_WORKERS="2")
    assert bad.returncode == 2 and bad.stderr.strip().startswith(f"wsdjax: {message}"), bad.stderr

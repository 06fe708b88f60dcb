"""Test-wide setup: 8 fake CPU devices (set before jax is imported anywhere) and helpers."""

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

# XLA:CPU's LLVM code generation at -O0 in the tests: their programs are small, so compiling
# is most of their time, and -O0 compiles about twice as fast (tests/unit/test_fused_loss.py:
# 62 -> 35 s). XLA's HLO passes (fusion, layout, sharding) are the same at every level;
# only the machine code of the fused loops is unoptimised. Users' runs keep XLA's default.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags_for_tests(devices: int) -> str:
  """XLA_FLAGS of a test process: `devices` fake CPU devices, TEST_XLA_FLAGS."""
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


os.environ.setdefault("XLA_FLAGS", xla_flags_for_tests(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent jax compilation cache for the tests and every process they start: many
# tests compile the same small shapes again, in-process or in a `python -m wsdjax...`
# launch, where compiling is most of the time on 2 cores (a tiny WSD run: 34 s -> 12 s).
# Cached executables compute bitwise the same results. A size limit turns on jax's file lock
# around cache reads and writes (without one, a process can read an entry that another,
# e.g. the other xdist worker, is still writing).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="wsdjax-tests-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import filelock  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))


# Every file that takes more than ~15 s, longest first (their test time on 2 cores, Dec
# 2026: ~185 s down to ~17 s). `make test` runs 2 workers with --dist loadfile, which hands
# out whole files in this order; longest first keeps the other worker from idling at the
# end behind a long file that started last (the short files fill the gaps).
LONGEST_FIRST = ("test_compare.py", "test_branches.py", "test_multiprocess.py",
                 "test_bad_input.py", "test_resume.py", "test_scaling.py", "test_supervise.py",
                 "test_aot.py",
                 "test_integrity.py", "test_trainer.py", "test_outputs.py", "test_ema.py",
                 "test_merge.py", "test_notebooks.py", "test_data_tokens.py",
                 "test_sharding.py", "test_lock.py", "test_eval.py", "test_schedules.py",
                 "test_sample.py", "test_export.py", "test_fused_loss.py",
                 "test_attention.py", "test_model.py", "test_prepare.py", "test_hooks.py",
                 "test_bench.py", "test_loss_law.py")


# Integration tests run commands in subprocesses, train runs, start processes or notebooks:
# every test under tests/integration/, and the few marked @pytest.mark.integration in
# tests/unit/. `make test-fast` runs the rest, the unit tests.
INTEGRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
  for item in items:
    if str(item.fspath).startswith(INTEGRATION + os.sep):
      item.add_marker(pytest.mark.integration)


def one_device_mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                           ("data", "fsdp", "tensor"))


@pytest.fixture
def tiny_config():
  """configs/tiny.py, a little smaller still: fast enough for many tests."""
  import tiny
  c = tiny.get_config()
  c.model.seq_len = 32
  c.train.global_batch_size = 8
  c.train.log_every = 5
  c.checkpoint.async_save = False
  return c


def subprocess_env(devices: int = 1) -> dict:
  """Environment for a `python -m wsdjax...` subprocess on `devices` fake CPU devices
  (with the tests' compilation cache, from os.environ)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags_for_tests(devices)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def run_cli(module: str, *args, devices: int = 1, env: dict | None = None, timeout: float = 300,
            input: str | bytes | None = None, cwd=REPO, text: bool = True,
            **popen_kwargs) -> subprocess.CompletedProcess:
  """`python -m <module> <args>` in a subprocess, from the repository, its output captured.

  env: the whole environment (default: subprocess_env(devices)); text=False for bytes
  output; popen_kwargs go to subprocess.run (e.g. preexec_fn). Never raises on a non-zero
  exit: the tests read returncode, stdout and stderr."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                        env=subprocess_env(devices) if env is None else env,
                        capture_output=True, text=text, timeout=timeout, input=input,
                        **popen_kwargs)


def write_jsonl_corpus(folder, files: int = 3, docs_per_file: int = 120, start: int = 0) -> str:
  """`files` JSONL files of KJV documents (bundled text) under `folder`; returns a glob."""
  import json
  from wsdjax.data import kjv
  docs = kjv.kjv_documents()
  os.makedirs(folder, exist_ok=True)
  for f in range(files):
    with open(os.path.join(folder, f"part-{f:03d}.jsonl"), "w", encoding="utf-8") as out:
      for i in range(docs_per_file):
        doc = docs[(start + f * docs_per_file + i) % len(docs)]
        out.write(json.dumps({"id": i, "text": doc}) + "\n")
  return os.path.join(str(folder), "*.jsonl")


def prepare_store(input_glob: str, output, **kwargs) -> dict:
  """A token store prepared in this process (one worker, no progress); its manifest."""
  from wsdjax.data import prepare
  args = prepare.PrepareArgs(input=input_glob, output=str(output),
                             **({"workers": 1, "progress": False, "val_fraction": 0.1} | kwargs))
  return prepare.prepare(args, log=lambda *a: None)["joined"]


# ---- finished runs shared by the files that only read them ----
VERSE = "In the beginning God created the heaven and the earth. And the earth was void."


def shared_folder(tmp_path_factory, name: str, build) -> "os.PathLike":
  """A folder that `build(folder)` fills once per test session, for every xdist worker: the
  first worker to ask builds it under a file lock, the other waits and reuses it. It lives
  in the session's temporary folder (pytest removes old ones), so no session sees another's."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the session's folder, above each worker's own
  (base / "shared").mkdir(exist_ok=True)
  folder, done = base / "shared" / name, base / "shared" / f"{name}.done"
  with filelock.FileLock(str(base / "shared" / f"{name}.lock")):
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      build(folder)
      done.touch()
  return folder


def tree_digest(folder) -> dict:
  """{relative path: sha1} of every file under `folder`."""
  return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def _train_byte_run(root):
  (root / "corpus.txt").write_text("\n\n".join(f"{i}: {VERSE}" for i in range(80)))
  out = run_cli("wsdjax.train", "--config", "configs/tiny.py", "--workdir", str(root / "run"),
                "--config.model.seq_len=32", "--config.train.global_batch_size=8",
                "--config.data.source=text", f"--config.data.path={root / 'corpus.txt'}",
                "--config.model.vocab_size=256", "--config.schedule.budgets=(6,12)",
                "--config.schedule.warmup_steps=2", "--config.checkpoint.every=6",
                "--config.train.ema_decays=(0.9,)")
  assert out.returncode == 0, out.stderr[-2000:]


@pytest.fixture(scope="session")
def byte_run(tmp_path_factory):
  """A finished tiny WSD-S run, byte-level on a small text file (corpus.txt, beside it):
  budgets 6 and 12 (decay-6, decay-13), main saved at steps 5 and 12, an EMA shadow (0.9).
  Trained once per session and shared by the files that read it (test_eval, test_sample,
  test_outputs): a test must not write into it (copy it first, shutil.copytree); the end of
  the session checks that nothing did."""
  run = shared_folder(tmp_path_factory, "byte_run", _train_byte_run) / "run"
  before = tree_digest(run)
  yield run
  assert tree_digest(run) == before, f"a test wrote into the shared run {run}"

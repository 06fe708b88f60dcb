"""The notebooks run top to bottom on a CPU (with smaller sizes injected after their
`parameters` cell, as papermill does) and are stored without outputs; their install cells
pick the right pip command per Colab runtime; their GPU/TPU sizes validate and fit the time
they promise; and the repository URL is written once, in pyproject.toml."""

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import types

import nbformat
import pytest

from conftest import REPO, xla_flags_for_tests

NOTEBOOKS = os.path.join(REPO, "notebooks")
NAMES = ("quickstart.ipynb", "river_valley.ipynb", "schedules.ipynb")
SMALL = {
    "quickstart.ipynb": 'size["model"].update(d_model=32, d_ff=128, seq_len=16)\n'
                        'size["train"]["global_batch_size"] = 4\n'
                        'size["schedule"].update(budgets=(6, 12), warmup_steps=1)\n'
                        'sample_tokens = 8',
    "schedules.ipynb": 'warmup_steps = 10\nbudgets = (100, 200, 400)',
    "river_valley.ipynb": 'size["model"].update(d_model=32, d_ff=64, seq_len=16)\n'
                          'size["train"]["global_batch_size"] = 4\n'
                          'size["schedule"].update(budgets=(8,), decay_steps=4, warmup_steps=2)',
}
# The notebooks that train, and so pick their sizes per platform.
SIZED = ("quickstart.ipynb", "river_valley.ipynb")
MFU = 0.35  # the conservative utilisation the notebooks' estimates assume
# Peak FLOP/s of the chips each accelerator size is promised for (one Colab runtime each):
# dense bfloat16, but float32 for the T4 (no bfloat16 matmuls). v2-8: 4 chips of 45.
CHIPS = {"gpu": {"L4": 121e12, "A100": 312e12}, "gpu_f32": {"T4": 8.1e12},
         "tpu": {"v5e-1": 197e12, "v2-8": 180e12}}
TPU_DEVICES = (1, 8)  # v5e-1 / v6e-1 have one jax device, v2-8 eight (one per core)
MINUTES = 8  # of training, leaving ~2 of the 10 for the install cell and the compiles


def load(name):
  return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


def pyproject() -> dict:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def repository_url() -> str:
  """pyproject's [project.urls] Repository: the one place the address is written."""
  return pyproject()["project"]["urls"]["Repository"]


def with_parameters(nb, source: str):
  """Insert `source` as a cell right after the cell tagged `parameters`."""
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  cell = nbformat.v4.new_code_cell(source)
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, cell)
  return nb


def execute(name, tmp_path, monkeypatch):
  from nbclient import NotebookClient
  # The kernel inherits the environment: one CPU device, as a user's notebook has.
  monkeypatch.setenv("XLA_FLAGS", xla_flags_for_tests(1))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = with_parameters(load(name), SMALL[name])
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  return nb


def outputs_text(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))


def cell_with(nb, text: str) -> str:
  """The source of the only code cell containing `text`."""
  found = [c.source for c in nb.cells if c.cell_type == "code" and text in c.source]
  assert len(found) == 1, f"{len(found)} code cells contain {text!r}"
  return found[0]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stripped_and_has_badge_install_and_parameters(name):
  nb = load(name)
  assert all(not c.get("outputs") and c.get("execution_count") is None
             for c in nb.cells if c.cell_type == "code"), f"{name}: outputs not stripped"
  assert "colab-badge.svg" in nb.cells[0].source
  assert 'if "google.colab" in sys.modules' in nb.cells[1].source
  assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
  assert "print(" in cell_with(nb, "jax.devices()")  # each says what it runs on


def test_repository_url_lives_in_pyproject_and_everything_agrees():
  url = repository_url()
  owner_repo = url.removeprefix("https://github.com/")
  assert re.fullmatch(r"[\w.-]+/[\w.-]+", owner_repo), url
  colab = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/"
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  for name in NAMES:
    nb = load(name)
    assert f'REPO_URL = "{url}"' in nb.cells[1].source, f"{name}: install cell"
    assert f"]({colab}{name})" in nb.cells[0].source, f"{name}: badge"
    assert f"]({colab}{name})" in readme, f"README: no Colab badge for {name}"
  texts = {name: open(os.path.join(NOTEBOOKS, name)).read() for name in NAMES}
  texts["README.md"] = readme
  for where, text in texts.items():  # no other address of the repository anywhere
    named = re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)", text)
    named += [r for r in re.findall(r"github\.com/([\w.-]+/[\w.-]+)", text)
              if r.split("/")[1].lower().startswith("wsdjax")]
    assert named and set(named) == {owner_repo}, f"{where}: {sorted(set(named))}"
  assert f'pip install "wsdjax @ git+{url}"' in readme
  assert all(u.startswith(url) for u in pyproject()["project"]["urls"].values())


# ---- the install cell, executed with pip (and the hardware probes) stubbed ----
def floor() -> tuple[int, ...]:
  """pyproject's jax floor (jax>=X.Y.Z) as a tuple of ints."""
  (spec,) = [d for d in pyproject()["project"]["dependencies"] if re.match(r"jax\b", d)]
  return tuple(int(n) for n in re.fullmatch(r"jax>=([\d.]+)", spec).group(1).split("."))


def run_install_cell(monkeypatch, name, runtime=None, jax_version="0.10.2"):
  """Execute the install cell of `name`; in Colab when `runtime` ('cpu', 'gpu', 'tpu') is
  given, simulating that hardware and `jax_version`. Returns (namespace, pip argvs)."""
  calls = []

  def run(argv, **kwargs):
    if os.path.basename(argv[0]) == "nvidia-smi":
      return subprocess.CompletedProcess(argv, 0, stdout="GPU 0: NVIDIA L4 (UUID: GPU-0)\n")
    calls.append(list(argv))
    return subprocess.CompletedProcess(argv, 0)

  real_spec, real_version = importlib.util.find_spec, importlib.metadata.version
  monkeypatch.setattr(subprocess, "run", run)
  if runtime is not None:
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    for var in ("COLAB_TPU_ADDR", "TPU_NAME"):
      monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("os.path.exists", lambda p: False)  # no /dev/nvidia0: ask nvidia-smi
    monkeypatch.setattr("shutil.which", lambda cmd: f"/usr/bin/{cmd}" if runtime == "gpu"
                        and cmd == "nvidia-smi" else None)
    monkeypatch.setattr("glob.glob", lambda p: ["/dev/accel0"] if runtime == "tpu"
                        and p.startswith("/dev/accel") else [])
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "libtpu"
                        else real_spec(n, *a))
    monkeypatch.setattr(importlib.metadata, "version", lambda p: jax_version
                        if p in ("jax", "jaxlib") else real_version(p))
  namespace = {"__name__": "__main__"}
  exec(load(name).cells[1].source, namespace)
  return namespace, calls


def expected_command(runtime, jax_version, url):
  pip = [sys.executable, "-m", "pip", "install", "-q"]
  keep = tuple(int(n) for n in jax_version.split(".")) >= floor()
  if keep:  # the runtime's jax (and its GPU/TPU backend) stays as it is
    return pip + [f"wsdjax @ git+{url}", f"jax=={jax_version}", f"jaxlib=={jax_version}"]
  extra = {"cpu": "", "gpu": "[cuda]", "tpu": "[tpu]"}[runtime]
  return pip + [f"wsdjax{extra} @ git+{url}"]


@pytest.mark.parametrize("jax_version", ["0.9.2", ".".join(map(str, floor())), "0.12.0"])
@pytest.mark.parametrize("runtime", ["cpu", "gpu", "tpu"])
def test_install_cell_installs_for_the_runtime(monkeypatch, runtime, jax_version):
  namespace, calls = run_install_cell(monkeypatch, "quickstart.ipynb", runtime, jax_version)
  assert calls == [expected_command(runtime, jax_version, repository_url())]


def test_install_cell_decisions_and_extras(monkeypatch):
  extras = pyproject()["project"]["optional-dependencies"]
  assert extras["cuda"] == ["jax[cuda12]"] and extras["tpu"] == ["jax[tpu]"]
  url = repository_url()
  for name in NAMES:  # the same cell in every notebook, outside Colab: installs nothing
    namespace, calls = run_install_cell(monkeypatch, name)
    assert calls == [] and namespace["JAX_FLOOR"] == floor()
    assert load(name).cells[1].source == load(NAMES[0]).cells[1].source
  detect, command = namespace["detect_runtime"], namespace["install_command"]
  yes, no = (lambda: True), (lambda: False)
  assert [detect(g, t) for g, t in ((yes, yes), (yes, no), (no, yes), (no, no))] == [
      "gpu", "gpu", "tpu", "cpu"]
  for runtime, extra in namespace["EXTRAS"].items():
    assert extra == "" or extra.strip("[]") in extras
    assert command(runtime, None, url)[-1] == f"wsdjax{extra} @ git+{url}"  # no jax yet
    assert command(runtime, "0.9.9", url)[-1] == f"wsdjax{extra} @ git+{url}"
    assert command(runtime, "0.11.1", url, "0.11.0")[-2:] == ["jax==0.11.1", "jaxlib==0.11.0"]


# ---- the GPU/TPU sizes: valid configs that train in the time the notebooks promise ----
def notebook_config(name, platform) -> dict:
  """The namespace of `name`'s parameters and config cells run for `platform` (its run
  config `cfg`, validated, and `size`)."""
  from wsdjax import config as config_lib
  nb = load(name)
  namespace = {"platform": platform}
  exec(next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])),
       namespace)
  exec(cell_with(nb, "config_lib.base_config()"), namespace)
  config_lib.validate(namespace["cfg"], device_count=1)
  return namespace


def run_flops(cfg, size) -> float:
  """Training FLOPs of the notebook's runs: each run's plan steps x tokens x FLOPs/token."""
  from wsdjax.model import transformer as model
  from wsdjax.schedule import plan
  steps = plan.make_plan(cfg.schedule).total_steps
  runs = 2 if size.get("compare_wsd") else 1  # quickstart: WSD beside WSD-S
  return (runs * steps * cfg.train.global_batch_size * cfg.model.seq_len
          * model.flops_per_token(cfg.model))


@pytest.mark.parametrize("platform", sorted(CHIPS))
@pytest.mark.parametrize("name", SIZED)
def test_accelerator_sizes_validate_and_fit_the_estimate(name, platform, capsys):
  from wsdjax import config as config_lib
  from wsdjax.model import transformer as model
  from wsdjax.model.kernels import swiglu
  namespace = notebook_config(name, platform)
  cfg, size = namespace["cfg"], namespace["size"]
  m = cfg.model
  if platform == "tpu":
    for devices in TPU_DEVICES:
      config_lib.validate(cfg, device_count=devices)
    assert m.seq_len % 128 == 0  # the splash attention kernel's blocks
  assert m.dtype == ("float32" if platform == "gpu_f32" else "bfloat16")
  assert m.d_model // m.n_heads % 8 == 0 and m.d_model // m.n_heads <= 128  # cuDNN's head dims
  assert (m.attention_impl, m.loss_impl, m.dense_impl) == ("auto",) * 3  # per-platform kernels
  if platform == "gpu_f32":  # T4, V100: Pallas GPU (Triton) kernels need compute capability 8
    assert swiglu.resolve(m.swiglu_impl, "gpu") != "pallas"
  params = model.param_count(m)
  assert (20e6 if platform != "gpu_f32" else 4e6) < params < 130e6, params
  flops = run_flops(cfg, size)
  for chip, peak in CHIPS[platform].items():
    minutes = flops / (MFU * peak) / 60
    assert minutes < MINUTES, f"{name} on {chip}: {minutes:.1f} min"
  # The estimate the notebook writes down is the one computed here.
  text = "".join(c.source for c in load(name).cells if c.cell_type == "markdown")
  fpt = model.flops_per_token(m)
  assert f"{params / 1e6:.1f}M params" in text and f"| {fpt / 1e6:.0f}M |" in text
  assert f"| {flops:.1e} |".replace("e+", "e") in text


def test_cpu_sizes_are_the_tested_ones():
  for name in SIZED:
    namespace = notebook_config(name, "cpu")
    assert namespace["cfg"].model.dtype == "float32"
    assert not namespace["size"].get("compare_wsd")  # the CPU tests never train WSD too


def test_quickstart_trains_wsd_beside_wsd_s_on_accelerators(monkeypatch):
  """The comparison cell, run with wsdjax.analysis.compare.compare stubbed: a valid compare config
  that trains only WSD, beside the WSD-S run."""
  import IPython.display
  from wsdjax.analysis import compare
  calls = []

  def fake_compare(cfg, workdir, only):
    compare.check(cfg)
    calls.append((workdir, only, [r.dirname for r in compare.runs(cfg)]))

  monkeypatch.setattr(compare, "compare", fake_compare)
  monkeypatch.setattr(IPython.display, "display", lambda *args: None)
  monkeypatch.setattr(IPython.display, "Image", lambda *args: None)
  source = cell_with(load("quickstart.ipynb"), "compare.compare(")
  for platform in CHIPS:
    namespace = notebook_config("quickstart.ipynb", platform)
    assert namespace["run_dir"] == f"{namespace['workdir']}/wsd_s"  # compare's layout
    exec(source, namespace)
  assert calls == [("runs/nb_quickstart", ("wsd",), ["wsd", "wsd_s"])] * len(CHIPS)


# ---- the notebooks, run on a CPU ----
def test_schedules_notebook_runs(tmp_path, monkeypatch):
  nb = execute("schedules.ipynb", tmp_path, monkeypatch)
  text = outputs_text(nb)
  assert "decayed checkpoints at steps: 100, 210, 430" in text  # C_i of WSD-S
  assert "(cpu)" in text
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 5


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nb = execute("quickstart.ipynb", tmp_path, monkeypatch)
  text = outputs_text(nb)
  assert "sizes for 'cpu'" in text
  assert "decay-13" in text and "step 13" in text  # WSD-S: C_2 = 12 + round(0.6) = 13
  assert (tmp_path / "runs" / "nb_quickstart" / "wsd_s" / "checkpoints" / "manifest.json").exists()


@pytest.mark.slow
def test_river_valley_notebook_runs(tmp_path, monkeypatch):
  nb = execute("river_valley.ipynb", tmp_path, monkeypatch)
  workdir = tmp_path / "runs" / "nb_river_valley"
  assert (workdir / "river_valley.png").exists()
  rows = (workdir / "river_valley.csv").read_text().splitlines()
  assert rows[0].startswith("branch,fork_step,step,main_loss,decayed_loss,gap")
  assert [r.split(",")[:3] for r in rows[1:]] == [["decay-8", "4", "8"]]
  text = outputs_text(nb)
  assert "fork    4" in text and "sizes for 'cpu'" in text

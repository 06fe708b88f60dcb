"""The notebooks run top to bottom (with smaller parameters injected after their
`parameters` cell, as papermill does) and are stored without outputs."""

import os

import nbformat
import pytest

from conftest import REPO, xla_flags_for_tests

NOTEBOOKS = os.path.join(REPO, "notebooks")
SMALL = {
    "quickstart.ipynb": 'budgets = (6, 12)\nd_model = 32\nseq_len = 16\nbatch_size = 4\n'
                        'sample_tokens = 8',
    "schedules.ipynb": 'warmup_steps = 10\nbudgets = (100, 200, 400)',
    "river_valley.ipynb": 'budgets = (8,)\ndecay_steps = 4\nd_model = 32\nseq_len = 16\n'
                          'batch_size = 4',
}


def load(name):
  return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


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


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_is_stripped_and_has_badge_install_and_parameters(name):
  nb = load(name)
  assert all(not c.get("outputs") and c.get("execution_count") is None
             for c in nb.cells if c.cell_type == "code"), f"{name}: outputs not stripped"
  assert "colab-badge.svg" in nb.cells[0].source
  assert 'if "google.colab" in sys.modules' in nb.cells[1].source
  assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def test_schedules_notebook_runs(tmp_path, monkeypatch):
  nb = execute("schedules.ipynb", tmp_path, monkeypatch)
  text = outputs_text(nb)
  assert "decayed checkpoints at steps: 100, 210, 430" in text  # C_i of WSD-S
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 5


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nb = execute("quickstart.ipynb", tmp_path, monkeypatch)
  text = outputs_text(nb)
  assert "decay-13" in text and "step 13" in text  # WSD-S: C_2 = 12 + round(0.6) = 13
  assert (tmp_path / "runs" / "nb_quickstart" / "checkpoints" / "manifest.json").exists()


@pytest.mark.slow
def test_river_valley_notebook_runs(tmp_path, monkeypatch):
  nb = execute("river_valley.ipynb", tmp_path, monkeypatch)
  workdir = tmp_path / "runs" / "nb_river_valley"
  assert (workdir / "river_valley.png").exists()
  rows = (workdir / "river_valley.csv").read_text().splitlines()
  assert rows[0].startswith("branch,fork_step,step,main_loss,decayed_loss,gap")
  assert [r.split(",")[:3] for r in rows[1:]] == [["decay-8", "4", "8"]]
  assert "fork    4" in outputs_text(nb)

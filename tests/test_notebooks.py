"""The notebooks in colabs/: committed clean, and every one runs on CPU.

Each notebook is executed with nbclient in a fresh Jupyter kernel with its
small settings (EO_JAX_NOTEBOOK_SMALL=1, CPU): a cell that raises fails the
test, and so does a notebook that runs past `TIME_LIMIT_S` in all (not per
cell). Workdirs go to a temporary folder (the kernel's TMPDIR is the test's
tmp_path); the kernel imports this checkout's eo_jax. Set
EO_JAX_NOTEBOOK_OUTPUT_DIR to keep the executed notebooks, with their
outputs, in that folder.
"""
from __future__ import annotations

import os
import pathlib
import time

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.notebooks

COLABS = pathlib.Path(__file__).resolve().parent.parent / "colabs"
NOTEBOOKS = ("01_quickstart.ipynb", "02_cnn_fundamentals.ipynb",
             "03_bagnet_evidence.ipynb", "04_self_supervised.ipynb",
             "05_segmentation.ipynb", "06_features_and_robustness.ipynb")
# Each takes 30-90 s on 2 quiet CPU cores; the limit leaves room for shared
# cores (the suite runs with -n 2 next to other tests).
TIME_LIMIT_S = 420


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(COLABS / name, as_version=4)


def _code_cells(notebook: nbformat.NotebookNode) -> list:
  return [c for c in notebook.cells if c.cell_type == "code"]


def test_the_folder_holds_the_listed_notebooks():
  assert sorted(p.name for p in COLABS.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
  notebook = _read(name)
  nbformat.validate(notebook)
  for i, cell in enumerate(_code_cells(notebook)):
    assert cell.outputs == [], f"{name}: code cell {i} has outputs; clear them."
    assert cell.execution_count is None, (
        f"{name}: code cell {i} has an execution count; clear it.")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_set_up_and_parameters(name):
  """The first code cell installs eo_jax (same cell everywhere); the next one
  holds SMALL, which the environment can turn on."""
  setup, parameters = (c.source for c in _code_cells(_read(name))[:2])
  assert setup == _code_cells(_read(NOTEBOOKS[0]))[0].source
  assert "REPO_URL = " in setup and "pip install" in setup
  assert "SMALL = " in parameters
  assert "EO_JAX_NOTEBOOK_SMALL" in parameters


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_runs_on_cpu_with_small_settings(name, tmp_path, monkeypatch):
  notebook = _read(name)
  # The kernel inherits this environment: small settings on the CPU, and
  # tempfile's folder (the notebooks' workdirs) inside tmp_path.
  monkeypatch.setenv("EO_JAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  # The checkout's eo_jax, even where an older copy is installed.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      filter(None, [str(COLABS.parent), os.environ.get("PYTHONPATH")])))
  deadline = time.monotonic() + TIME_LIMIT_S
  client = nbclient.NotebookClient(
      notebook, kernel_name="python3",
      resources={"metadata": {"path": str(COLABS)}},
      # One limit for the whole notebook: each cell gets what is left.
      timeout_func=lambda cell: max(1, int(deadline - time.monotonic())))
  began = time.monotonic()
  try:
    client.execute()
  finally:
    keep = os.environ.get("EO_JAX_NOTEBOOK_OUTPUT_DIR")
    if keep:
      os.makedirs(keep, exist_ok=True)
      nbformat.write(notebook, os.path.join(keep, name))
  seconds = time.monotonic() - began
  pictures = sum("image/png" in output.get("data", {})
                 for cell in _code_cells(notebook) for output in cell.outputs)
  assert pictures, f"{name} showed no picture."
  print(f"{name}: {seconds:.0f} s, {pictures} pictures")

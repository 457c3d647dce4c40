"""benchmarks/sweep.py: grid expansion, overrides, and a two-run sweep whose
table must repeat what the runs themselves wrote."""
import json
import os
import sys

import numpy as np
from PIL import Image
import pytest

from eo_jax.config import base_config
from tiny import final_params

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from benchmarks import sweep  # noqa: E402  pylint: disable=g-import-not-at-top

CONFIG = os.path.join(REPO, "configs", "bagnet.py")


def test_grid_expands_every_model_and_optimizer():
  specs = sweep.expand_grid("data=eolearn")
  assert len(specs) == 12 and len(set(specs)) == 12
  assert "configs/bagnet.py:model=bagnet33,opt=adadelta,data=eolearn" in specs
  assert len({sweep.run_name(s) for s in specs}) == 12
  assert sweep.expand_grid("", ["resnet18"], ["sgd"]) == [
      "configs/bagnet.py:model=resnet18,opt=sgd"]
  assert sweep.short_labels(["c.py:model=a,data=x,opt=sgd",
                             "c.py:model=b,data=x,opt=sgd"]) == ["a", "b"]


def test_override_sets_typed_values_and_rejects_unknown_keys():
  config = base_config()
  config.lock()
  sweep.apply_override(config, "train.epochs=2")
  sweep.apply_override(config, "optim.name=sgd")
  sweep.apply_override(config, "train.early_stopping.metric='val/loss'")
  assert config.train.epochs == 2.0 and config.optim.name == "sgd"
  assert config.train.early_stopping.metric == "val/loss"
  with pytest.raises(KeyError, match="no key"):
    sweep.apply_override(config, "train.epochz=2")
  with pytest.raises(ValueError, match="look like"):
    sweep.apply_override(config, "train.epochs")


def _table_rows(markdown):
  lines = [l for l in markdown.splitlines() if l.startswith("| `")]
  return {l.split("|")[1].strip().strip("`"): [c.strip() for c in l.split("|")[2:-1]]
          for l in lines}


def test_sweep_table_and_chart_repeat_the_runs_numbers(tmp_path):
  specs = [f"{CONFIG}:model=bagnet9,data=eolearn,opt=sgd,runlocal=True",
           f"{CONFIG}:model=resnet18,data=eolearn,opt=adam,runlocal=True",
           # Fails at once (no data there): reported, and the sweep goes on.
           f"{CONFIG}:model=bagnet9,data=eurosat,opt=sgd,runlocal=True,"
           f"path={tmp_path / 'nowhere'}"]
  # One evaluation, without the BagNet's heatmap pictures (the table reads
  # neither a second one nor the pictures).
  overrides = ["train.steps=2", "train.eval_every_steps=2",
               "evals.val.visualize=False", "evals.test.visualize=False"]
  rows = sweep.sweep(specs, str(tmp_path), overrides=overrides, command="cmd")
  table = (tmp_path / "results.md").read_text()
  cells = _table_rows(table)
  assert list(cells) == specs
  assert "failed: MissingDataError: EuroSAT (rgb) not found" in " ".join(cells[specs[2]])
  # Published / hand-counted receptive fields: BagNet-9 by construction; the
  # low-res ResNet-18: 3 (stem) + 4 x 2 + (2 + 3 x 4) + (4 + 3 x 8) + (8 + 3 x 16).
  fields = {specs[0]: 9, specs[1]: 109}
  for spec, row in zip(specs[:2], rows):
    workdir = tmp_path / sweep.run_name(spec)
    results = json.loads((workdir / "results.json").read_text())
    assert results["step"] == 2  # the overrides took effect
    (_, _, params, rf, size, best, test_acc, test_f1, wall) = cells[spec]
    n_params = sum(v.size for v in final_params(str(workdir)).values())
    assert params == f"{n_params:,}" and row.params == n_params
    assert int(rf) == fields[spec] and int(size) == 33
    stop = results["early_stopping"]
    assert best == f"{stop['best']:.4f} ({stop['best_step']})"
    assert row.best_val_accuracy == stop["best"]
    assert test_acc == f"{results['test']['accuracy']:.4f}"
    assert test_f1 == f"{results['test']['macro_f1']:.4f}"
    assert row.test_accuracy == results["test"]["accuracy"]
    assert float(wall) > 0
  saved = json.loads((tmp_path / "results.json").read_text())
  assert [r["test_accuracy"] for r in saved[:2]] == [r.test_accuracy for r in rows[:2]]
  with Image.open(tmp_path / "best_val_accuracy.png") as png:
    assert png.size[0] > 300 and png.size[1] > 100

  # A second sweep reuses the finished runs instead of training again.
  stamp = os.path.getmtime(tmp_path / sweep.run_name(specs[0]) / "results.json")
  again = sweep.sweep(specs[:2], str(tmp_path), overrides=overrides, command="cmd")
  assert os.path.getmtime(tmp_path / sweep.run_name(specs[0]) / "results.json") == stamp
  assert [(r.wall_s, r.test_accuracy) for r in again] == [
      (r.wall_s, r.test_accuracy) for r in rows[:2]]
  assert np.isfinite(again[0].wall_s)

"""`python -m eo_jax.robustness`: corruption scores of tiny trained runs,
checked against the evaluator, an independent numpy computation and hand-
computed corruption errors; the CIFAR-10-C path on fixture files."""
import csv
import dataclasses
import json
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from cifar_fixtures import image, write_cifar10, write_cifar10_c
import eo_jax
from eo_jax import errors, robustness
from eo_jax.data import corruptions
from eo_jax.train import trainer
from tiny import reference_metrics, tiny_config


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("synthetic")
  config = tiny_config(**{"train.steps": 8, "train.eval_every_steps": 8})
  trainer.train_and_evaluate(config, str(workdir))
  return str(workdir)


N_TEST = 6


def _noisy(severity):
  """CIFAR-10-C fixture: severity 1 is the clean test set, then brighter."""
  clean = np.stack([image(1000 + t) for t in range(N_TEST)]).astype(int)
  return np.clip(clean + 40 * (severity - 1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
  """A tiny run on CIFAR-10 fixture batches; CIFAR-10-C lies beside them."""
  root = tmp_path_factory.mktemp("cifar")
  batches = write_cifar10(root / "data", per_batch=4, num_test=N_TEST)
  write_cifar10_c(root / "data", [t % 10 for t in range(N_TEST)],
                  {"gaussian_noise": _noisy, "fog": lambda s: _noisy(6 - s)})
  config = tiny_config(**{"train.steps": 6, "train.eval_every_steps": 6})
  with config.unlocked():
    config.data = ml_collections.ConfigDict(dict(name="cifar10", path=batches,
                                                 val_fraction=0.5))
  trainer.train_and_evaluate(config, str(root / "run"))
  return str(root / "run"), str(root / "data" / "CIFAR-10-C")


def _csv_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _direct_scores(run, images, labels):
  """Macro-F1 and accuracy of normalised images predicted in one batch,
  recomputed in numpy (tests/tiny.py's reference)."""
  mean = np.array([b.mean for b in run.info.bands], np.float32)
  std = np.array([b.std for b in run.info.bands], np.float32)
  logits = run.predict((np.asarray(images, np.float32) - mean) / std)
  return reference_metrics(logits, labels, run.info.num_classes)


def test_cli_tables_figures_and_the_clean_score_of_the_evaluator(synthetic_run, tmp_path):
  out = tmp_path / "out"
  status = robustness.main(["robustness", f"--workdir={synthetic_run}",
                            "--corruptions=haze,gaussian_noise", "--severities=1,5",
                            f"--baseline={synthetic_run}", f"--out={out}"])
  assert status == 0
  rows = _csv_rows(out / "robustness.csv")
  assert [(r["corruption"], r["severity"]) for r in rows] == [
      ("clean", "0"), ("haze", "1"), ("haze", "5"), ("gaussian_noise", "1"),
      ("gaussian_noise", "5")]
  expected = eo_jax.restore_run(synthetic_run).evaluate("test")
  np.testing.assert_allclose(float(rows[0]["macro_f1"]), expected["macro_f1"], rtol=1e-12)
  np.testing.assert_allclose(float(rows[0]["accuracy"]), expected["accuracy"], rtol=1e-12)
  # Against itself every corruption error is exactly 1.
  summary = json.loads((out / "robustness.json").read_text())
  # The CSV reads back to the rows the JSON holds, to the last digit.
  again = robustness.read_csv(str(out / "robustness.csv"))
  assert summary["rows"] == [dataclasses.asdict(r) for r in again]
  assert summary["corruption_errors"]["mce"] == 1.0
  assert set(summary["corruption_errors"]["ce"].values()) == {1.0}
  markdown = (out / "robustness.md").read_text()
  assert "| corruption | severity 1 | severity 5 | mean | CE | relative CE |" in markdown
  assert "mCE 1.0000" in markdown and "| haze |" in markdown
  for name in ("heatmap.png", "examples.png"):
    with Image.open(out / name) as picture:
      assert picture.format == "PNG" and min(picture.size) > 100


def test_scores_equal_an_independent_computation_and_severity_zero_is_clean(synthetic_run):
  run = eo_jax.restore_run(synthetic_run)
  rows = robustness.evaluate_corruptions(run, "test", ["dead_band", "misregistration"],
                                         [0, 3], batch_size=5, seed=4)
  clean = rows[0]
  assert (clean.corruption, clean.severity) == ("clean", 0)
  for row in rows[1:]:
    if row.severity == 0:
      assert row.metrics == clean.metrics
  source = run.dataset.split("test")
  raw = [source[i]["image"] for i in range(len(source))]
  labels = np.array([int(source[i]["label"]) for i in range(len(source))])
  for name in ("dead_band", "misregistration"):
    corrupted = [corruptions.corrupt(name, x, 3, run.info.bands,
                                     seed=robustness.corruption_seed(4, name, i))
                 for i, x in enumerate(raw)]
    want = _direct_scores(run, corrupted, labels)
    got = next(r for r in rows if (r.corruption, r.severity) == (name, 3))
    assert got.metrics["accuracy"] == want["accuracy"]
    np.testing.assert_allclose(got.metrics["macro_f1"], want["macro_f1"], rtol=1e-12)
  # Batching does not change the numbers.
  again = robustness.evaluate_corruptions(run, "test", ["dead_band", "misregistration"],
                                          [0, 3], batch_size=12, seed=4)
  assert [r.metrics for r in again] == [r.metrics for r in rows]


def test_segmentation_runs_score_miou_at_their_input_size():
  # An untrained segmenter (step 0) that sees 16 px images resized to 24 px:
  # the clean mIoU is the evaluator's, through the pipeline's own resizing.
  config = tiny_config(**{"data.task": "segmentation", "objective": "segmentation",
                          "data.num_test": 10, "input.image_size": 24})
  with config.unlocked():
    config.model = ml_collections.ConfigDict(dict(
        name="segmentation", decoder="linear",
        backbone=dict(name="resnet", stage_sizes=(1, 1), block="basic", width=8,
                      low_res_stem=True)))
  run = eo_jax.build_run(config)
  rows = robustness.evaluate_corruptions(run, "test", ["haze"], [0, 2], batch_size=4)
  expected = run.evaluate("test")
  assert list(rows[0].metrics) == ["miou", "mean_acc", "overall_acc"]
  for key in rows[0].metrics:
    np.testing.assert_allclose(rows[0].metrics[key], expected[key], rtol=1e-12)
  assert rows[1].metrics == rows[0].metrics  # severity 0
  assert rows[2].metrics != rows[0].metrics


def test_corruption_errors_by_hand():
  def rows(clean, scores):
    out = [robustness.Row("clean", 0, {"m": clean}, 10)]
    return out + [robustness.Row(c, s, {"m": v}, 10) for (c, s), v in scores.items()]
  ours = rows(0.9, {("a", 1): 0.8, ("a", 2): 0.6, ("b", 1): 0.9, ("b", 2): 0.9})
  base = rows(0.8, {("a", 1): 0.6, ("a", 2): 0.4, ("b", 1): 0.7, ("b", 2): 0.5})
  result = robustness.mce(ours, base, "m")
  # a: (0.2 + 0.4) / (0.4 + 0.6); relative (0.1 + 0.3) / (0.2 + 0.4).
  # b: (0.1 + 0.1) / (0.3 + 0.5); relative 0 / (0.1 + 0.3).
  np.testing.assert_allclose([result.ce["a"], result.ce["b"]], [0.6, 0.25])
  np.testing.assert_allclose([result.relative_ce["a"], result.relative_ce["b"]], [2 / 3, 0.0])
  np.testing.assert_allclose([result.mce, result.relative_mce], [0.425, 1 / 3])
  with pytest.raises(errors.ConfigValueError, match="different corruptions"):
    robustness.mce(ours, base[:-1], "m")


def test_bad_input_gives_one_clear_error(synthetic_run, cifar_run, tmp_path, capsys):
  def fails(*flags):
    status = robustness.main(["robustness", *flags, f"--out={tmp_path / 'x'}"])
    return status, capsys.readouterr().err
  status, err = fails(f"--workdir={synthetic_run}", "--corruptions=haze,fog")
  assert status == 1 and "'fog'" in err and "quantization" in err
  status, err = fails(f"--workdir={tmp_path}")
  assert status == 1 and "no checkpoint" in err
  status, err = fails(f"--workdir={synthetic_run}", f"--baseline={cifar_run[0]}")
  assert status == 1 and "--baseline" in err and "band mismatch" in err
  status, err = fails(f"--workdir={synthetic_run}", "--split=train2")
  assert status == 1 and "'train2'" in err and "'val'" in err
  status, err = fails(f"--workdir={synthetic_run}", "--severities=1,9")
  assert status == 1 and "severities" in err
  status, err = fails(f"--workdir={synthetic_run}", f"--cifar10c={cifar_run[1]}")
  assert status == 1 and "R, G, B" in err
  status, err = fails("--corruptions=haze")
  assert status == 2 and "workdir" in err


def test_cifar10c_files_replace_the_corruptions(cifar_run, tmp_path, capsys):
  workdir, folder = cifar_run
  out = tmp_path / "c"
  # The CIFAR-10-C folder beside the run's data is found without --cifar10c.
  status = robustness.main(["robustness", f"--workdir={workdir}",
                            "--corruptions=gaussian_noise,fog", "--severities=1,2",
                            f"--out={out}"])
  assert status == 0
  rows = {(r["corruption"], int(r["severity"])): r for r in _csv_rows(out / "robustness.csv")}
  assert set(rows) == {("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 2),
                       ("fog", 1), ("fog", 2)}
  # Severity 1 of the fixture is the clean test set itself.
  for key in ("macro_f1", "accuracy", "map"):
    assert rows[("gaussian_noise", 1)][key] == rows[("clean", 0)][key]
  run = eo_jax.restore_run(workdir)
  labels = np.array([t % 10 for t in range(N_TEST)])
  for name, severity in (("gaussian_noise", 2), ("fog", 1)):
    stack = _noisy(severity) if name == "gaussian_noise" else _noisy(6 - severity)
    want = _direct_scores(run, stack, labels)
    assert float(rows[(name, severity)]["accuracy"]) == want["accuracy"]
    np.testing.assert_allclose(float(rows[(name, severity)]["macro_f1"]), want["macro_f1"],
                               rtol=1e-12)
  assert "CIFAR-10-C" in (out / "robustness.md").read_text()
  assert os.path.isfile(out / "examples.png") and os.path.isfile(out / "heatmap.png")
  for names, message in (("haze", "Unknown corruption(s) ['haze']"),
                         ("fog,contrast", "['contrast.npy']")):
    status = robustness.main(["robustness", f"--workdir={workdir}", f"--cifar10c={folder}",
                              f"--corruptions={names}", f"--out={out}"])
    assert status == 1 and message in capsys.readouterr().err

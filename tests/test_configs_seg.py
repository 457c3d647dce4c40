"""configs/seg_whu.py and configs/seg_eolearn.py end to end: a segmentation
run on WHU-OHS files in the published layout, resumed after a crash, then
whole-tile prediction with `python -m eo_jax.predict`; a decoder on an
encoder taken from another run (trained too in the `slow` variant)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import eo_jax
from eo_jax import config as config_lib
from eo_jax.data.datasets import MissingDataError
from eo_jax.train import trainer
from test_configs_dino import GEO, write_whu_ohs
from tiny import Crash, crash_at, final_params, flat_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg):
  return config_lib.load_config(os.path.join(REPO, "configs", f"{name}.py:{arg}"))


@pytest.fixture(scope="module")
def whu_run(tmp_path_factory):
  root = write_whu_ohs(tmp_path_factory.mktemp("data") / "WHU-OHS")
  workdir = tmp_path_factory.mktemp("seg_whu")
  config = _config("seg_whu", f"runlocal=True,path={root},decoder=segmenter")
  results = trainer.train_and_evaluate(config, str(workdir))
  return root, workdir, config, results


def test_seg_whu_trains_on_whu_ohs_files_and_resumes_exactly(whu_run, tmp_path):
  root, workdir, config, results = whu_run
  assert results["dataset"] == "whu_ohs" and results["step"] == 4
  assert set(results["test"]) >= {"miou", "overall_acc", "mean_acc", "loss"}
  assert (workdir / "segmentation.png").stat().st_size > 0
  assert (workdir / "confusion_val.png").stat().st_size > 0
  with pytest.raises(Crash):
    trainer.train_and_evaluate(config, str(tmp_path), hooks=[crash_at(3)])
  resumed = trainer.train_and_evaluate(config, str(tmp_path))
  a, b = final_params(str(workdir)), final_params(str(tmp_path))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  np.testing.assert_equal(resumed["test"], results["test"])  # NaN: absent classes


def test_whole_tile_prediction_keeps_the_georeference(whu_run, tmp_path):
  root, workdir, _, _ = whu_run
  tile = root / "ts" / "image" / "S1_0001.tif"
  out = tmp_path / "map"
  proc = subprocess.run(
      [sys.executable, "-m", "eo_jax.predict", f"--workdir={workdir}",
       f"--input={tile}", f"--output={out}", "--stride=8"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with tifffile.TiffFile(str(out) + ".tif") as tif:
    labels = tif.asarray()
    tags = {code: tif.pages[0].tags[code].value for code, *_ in GEO
            if code in tif.pages[0].tags}
  assert labels.shape == (32, 32) and labels.max() < 24
  assert tags == {code: value for code, _, _, value, _ in GEO}
  assert (tmp_path / "map.png").stat().st_size > 0
  # The wrong bands are refused with one line.
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((16, 16, 5), np.float32))
  proc = subprocess.run(
      [sys.executable, "-m", "eo_jax.predict", f"--workdir={workdir}",
       f"--input={bad}", f"--output={tmp_path / 'x'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1 and "5 bands" in proc.stderr and "Traceback" not in proc.stderr


def test_seg_whu_without_data_says_where_to_get_it(tmp_path):
  with pytest.raises(MissingDataError, match="irsip.whu.edu.cn"):
    trainer.train_and_evaluate(_config("seg_whu", ""), str(tmp_path))


def _decoder_on_encoder_of(first):
  """seg_eolearn's `init=`: a conv decoder on the frozen backbone of the run
  in `first`."""
  second = _config("seg_eolearn", f"runlocal=True,init={first},decoder=conv")
  assert second.init_from.source_prefix == "backbone"
  assert second.model.freeze_backbone and second.optim.frozen == ("^backbone/",)
  return second


def _assert_backbone_copied(first, params):
  a = final_params(str(first))
  copied = [k for k in params if k.startswith("backbone/")]
  assert copied
  for key in copied:
    np.testing.assert_array_equal(a[key], params[key], err_msg=key)


def test_a_decoder_starts_on_an_encoder_from_another_run(tmp_path):
  # A supervised segmentation run's backbone becomes a frozen encoder for a
  # new decoder: the step-0 state the trainer would start from (build_run
  # goes through the same create_train_state) holds the backbone's weights.
  # Frozen parameters staying fixed in training is checked by
  # tests/test_configs_mae.py and tests/test_configs_transfer.py; the slow
  # test below trains this decoder too.
  first = tmp_path / "first"
  trainer.train_and_evaluate(_config("seg_eolearn", "runlocal=True,backbone=resnet"),
                             str(first))
  run = eo_jax.build_run(_decoder_on_encoder_of(first))
  _assert_backbone_copied(first, flat_params(run.state.params))


@pytest.mark.slow
def test_a_decoder_on_an_encoder_from_another_run(tmp_path):
  # ... and the backbone's weights stay fixed while the decoder trains.
  first = tmp_path / "first"
  trainer.train_and_evaluate(_config("seg_eolearn", "runlocal=True,backbone=resnet"),
                             str(first))
  trainer.train_and_evaluate(_decoder_on_encoder_of(first), str(tmp_path / "second"))
  _assert_backbone_copied(first, final_params(str(tmp_path / "second")))
  assert json.loads((tmp_path / "second" / "results.json").read_text())["step"] == 4

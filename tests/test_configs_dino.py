"""configs/dino_whu.py and configs/dino_s2.py end to end.

The WHU-OHS run reads a tiny copy of the published layout (32-band GeoTIFF
tiles and uint8 label tiles, written here), probes on its classification
patches, and is interrupted and resumed: the resumed run must end with
exactly the parameters AND the teacher of an uninterrupted one.
"""
import os

import jax
import numpy as np
import pytest
import scipy.special
import tifffile

from eo_jax import config as config_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import MissingDataError, build_dataset
from eo_jax.objectives import OBJECTIVES
from eo_jax.train import trainer
from tiny import Crash

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "configs")
GEO = [(33550, "d", 3, (10.0, 10.0, 0.0), True),
       (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4400000.0, 0.0), True)]
TILE, PATCH = 32, 16


def _load(name):
  return config_lib.config_module(os.path.join(CONFIGS, f"{name}.py"))


def write_whu_ohs(root, tiles=(("tr", 3), ("val", 2), ("ts", 1))):
  """32x32 tiles: each 16 px patch has one of two land covers (ids 3, 10),
  with its own spectrum and texture; a quarter of each patch is unlabelled."""
  rng = np.random.default_rng(0)
  spectra = {3: rng.uniform(500, 3000, 32), 10: rng.uniform(500, 3000, 32)}
  yy, xx = np.mgrid[:PATCH, :PATCH]
  for folder, count in tiles:
    (root / folder / "image").mkdir(parents=True)
    (root / folder / "label").mkdir(parents=True)
    for t in range(count):
      image = np.zeros((TILE, TILE, 32), np.float64)
      label = np.zeros((TILE, TILE), np.uint8)
      for r in range(0, TILE, PATCH):
        for c in range(0, TILE, PATCH):
          cls = (3, 10)[(r // PATCH + c // PATCH + t) % 2]
          texture = np.sin((xx + yy) / (2.0 if cls == 3 else 5.0))
          image[r:r + PATCH, c:c + PATCH] = spectra[cls] * (1 + 0.2 * texture[..., None])
          label[r:r + PATCH, c:c + PATCH] = cls
          label[r:r + PATCH // 2, c:c + PATCH // 2] = 0
      image += rng.normal(0, 50, image.shape)
      name = f"S1_{t + 1:04d}.tif"
      tifffile.imwrite(root / folder / "image" / name, image.astype(np.int16),
                       photometric="minisblack", planarconfig="contig",
                       extratags=GEO)
      tifffile.imwrite(root / folder / "label" / name, label, extratags=GEO)
  return root


def _final_state(box, last_step, crash_at=None):
  def hook(step, state):
    if step == crash_at:
      raise Crash(f"simulated crash at step {step}")
    if step == last_step:
      box["params"], box["extra"] = jax.device_get((state.params, state.extra))
  return hook


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _assert_val_metrics_recomputed(config, box, val):
  """The trainer's DINO val metrics equal ones recomputed in numpy from the
  final student and teacher (the run's last state is the evaluated one).

  Per example: cosine between teacher and student class tokens; teacher
  softmax at teacher_temp, its entropy and its top prototype; cross-entropy
  with the student's softmax at student_temp. Then means over the split and
  the number of distinct top prototypes.
  """
  dataset = build_dataset(config.data)
  n = len(dataset.split("val"))
  image = next(iter(pipeline.eval_loader(
      dataset, "val", config.input, batch_size=n,
      image_size=config.input.image_size or None)))["image"]
  objective = OBJECTIVES.get(config.objective)(config, dataset.info,
                                               run_length=(1, 6))
  cls = jax.jit(lambda p, x: objective.backbone.apply({"params": p}, x)[1]["cls"])
  head = jax.jit(lambda p, x: objective.dino_head.apply({"params": p}, x))
  out = {}
  for name, p in (("teacher", box["extra"]["teacher"]),
                  ("student", box["params"]["student"])):
    tokens = cls(p["backbone"], image)
    out[name] = (np.asarray(tokens, np.float64),
                 np.asarray(head(p["dino_head"], tokens), np.float64))
  (t_cls, t_logits), (s_cls, s_logits) = out["teacher"], out["student"]
  cosine = np.sum(t_cls * s_cls, -1) / (np.linalg.norm(t_cls, axis=-1) *
                                        np.linalg.norm(s_cls, axis=-1))
  t_probs = scipy.special.softmax(t_logits / config.dino.teacher_temp, -1)
  s_log_probs = scipy.special.log_softmax(s_logits / config.dino.student_temp,
                                          -1)
  entropy = -np.sum(t_probs * np.log(np.maximum(t_probs, 1e-30)), -1)
  # Six small updates with an EMA teacher: close, but not the same network.
  assert 0.9 < cosine.mean() < 0.9999
  assert val["cosine"] == pytest.approx(cosine.mean(), rel=1e-6)
  assert val["loss"] == pytest.approx(-np.sum(t_probs * s_log_probs, -1).mean(),
                                      rel=1e-5)
  assert val["teacher_entropy"] == pytest.approx(entropy.mean(), rel=1e-5)
  assert val["prototypes_used"] == len(np.unique(t_logits.argmax(-1)))


def test_runlocal_dino_trains_on_synthetic_32_band_data(tmp_path):
  config = _load("dino_whu").get_config("runlocal=True")
  box = {}
  results = trainer.train_and_evaluate(config, str(tmp_path),
                                       hooks=[_final_state(box, 6)])
  assert results["step"] == 6 and results["dataset"] == "synthetic"
  _assert_val_metrics_recomputed(config, box, results["val"])
  # The teacher's class token separates the three synthetic classes.
  assert results["probe"]["knn3/accuracy"] > 0.6, results["probe"]
  for name in ("attention.png", "patch_pca.png", "curves.png", "results.json"):
    assert (tmp_path / name).stat().st_size > 0, name
  # The teacher followed the student (EMA) without becoming it.
  student, teacher = box["params"]["student"], box["extra"]["teacher"]
  kernel = lambda t: t["backbone"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert not np.array_equal(kernel(student), kernel(teacher))


def test_init_from_another_dino_run_starts_the_teacher_as_the_loaded_student(tmp_path):
  import eo_jax  # pylint: disable=g-import-not-at-top
  from eo_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  # A source checkpoint whose student is neither its teacher nor any init.
  source = eo_jax.build_run(_load("dino_whu").get_config("runlocal=True"))
  student = jax.tree.map(lambda x: np.asarray(x) + 0.125,
                         source.state.params["student"])
  saved = Checkpointer(str(tmp_path / "source" / "checkpoints"), keep=1)
  saved.save(1, {"params": {"student": student}, "model_state": {}}, None,
             {"config": source.config.to_json_best_effort(),
              "info": source.info.to_dict()})
  saved.close()
  target = _load("dino_whu").get_config("runlocal=True")
  target.unlock()
  target.init_from.workdir = str(tmp_path / "source")
  target.init_from.source_prefix = target.init_from.target_prefix = "student"
  run = eo_jax.build_run(target)
  want = [np.asarray(x) for x in jax.tree.leaves(student)]
  for name, tree in (("student", run.state.params["student"]),
                     ("teacher", run.state.extra["teacher"])):
    got = [np.asarray(x) for x in jax.tree.leaves(tree)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w, err_msg=name)


def test_dino_whu_config_runs_on_whu_ohs_files_and_resumes_exactly(tmp_path):
  root = write_whu_ohs(tmp_path / "WHU-OHS")
  config = _load("dino_whu").get_config(f"runlocal=True,path={root}")
  config.train.checkpoint_every_steps = 2
  straight, resumed = {}, {}
  results = trainer.train_and_evaluate(config, str(tmp_path / "a"),
                                       hooks=[_final_state(straight, 6)])
  assert results["dataset"] == "whu_ohs" and results["step"] == 6
  assert set(results) >= {"val", "test", "probe"}
  # The two land covers have distinct spectra (see write_whu_ohs), so any
  # probe that pairs each patch's features with its own label separates the
  # 8 eval patches (4 per class) perfectly; a misaligned one scores ~0.5.
  assert results["probe"]["linear/accuracy"] == 1.0, results["probe"]
  assert results["probe"]["linear/macro_f1"] == 1.0, results["probe"]
  with pytest.raises(Crash):
    trainer.train_and_evaluate(config, str(tmp_path / "b"),
                               hooks=[_final_state({}, 6, crash_at=3)])
  again = trainer.train_and_evaluate(config, str(tmp_path / "b"),
                                     hooks=[_final_state(resumed, 6)])
  _assert_trees_equal(straight["params"], resumed["params"])
  # Teacher and Sinkhorn-free state travel in the checkpoint's extra.
  _assert_trees_equal(straight["extra"], resumed["extra"])
  assert again["val"] == results["val"]


def test_dino_whu_without_data_says_where_to_get_it(tmp_path):
  for arg in ("", f"path={tmp_path / 'nowhere'}"):
    config = _load("dino_whu").get_config(arg)
    with pytest.raises(MissingDataError, match="config.data.path"):
      trainer.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.parametrize("name", ["dino_whu", "dino_s2"])
def test_probe_and_crop_sizes_fit_the_vit(name):
  module = _load(name)
  for arg in ("", "runlocal=True") + (("small_data=True",) if name == "dino_whu" else ()):
    c = module.get_config(arg)
    patch = c.model.get("patch_size") or int(c.model.variant.split("/")[1])
    assert c.dino.global_size % patch == 0 and c.dino.local_size % patch == 0
    probe = c.evals.knn
    for key in ("data", "split", "train_split", "prefix", "image_size"):
      assert probe[key] == c.evals.linear[key], key  # both probe the same thing
    probe_size = probe.image_size or probe.data.get("patch_size") or probe.data.get(
        "image_size")
    if probe.data.name == "eolearn_sample":
      assert probe_size == 16  # 9 px patches resized to a 2 x 2 grid
    assert probe_size % patch == 0, (arg, probe_size, patch)
    assert c.optim.weight_decay_end == 0.4 and c.optim.grad_clip_norm == 3.0
    assert c.optim.layer_decay == 0.9
  # small_data changes what it documents.
  if name == "dino_whu":
    small = module.get_config("small_data=True")
    assert small.dino.num_prototypes == 4096 and small.dino.head_hidden_dim == 512
    assert small.input.batch_size == 64 and small.dino.num_local == 4
    assert small.dino.warmup_teacher_temp_epochs == 5
    full = module.get_config()
    assert full.dino.num_prototypes == 65536 and full.dino.num_local == 8
    full.data.path = "/data/whu"
    # Both probes follow data.path.
    assert full.evals.knn.data.path == full.evals.linear.data.path == "/data/whu"


@pytest.mark.parametrize("name", ["dino_s2", "dino_whu", "dino_spectral"])
def test_small_batch_recipe_changes_what_it_documents(name):
  module = _load(name)
  arg = "path=/data/cube.npy" if name == "dino_spectral" else ""
  plain = module.get_config(arg).to_dict()
  small = module.get_config(",".join(filter(None, [arg, "small_batch=True"]))).to_dict()
  assert small["input"]["batch_size"] == 64
  assert small["dino"]["teacher_temp"] == small["dino"]["warmup_teacher_temp"] == 0.04
  assert small["model"]["layerscale_init"] is None
  # The lr follows the batch by the configs' rule; nothing else changes.
  assert small["optim"]["lr"] == pytest.approx(0.004 * (64 / 1024) ** 0.5)
  changed = {f"{section}.{key}" for section, values in plain.items()
             if isinstance(values, dict) for key in values
             if values[key] != small[section][key]}
  assert changed <= {"input.batch_size", "dino.teacher_temp", "dino.warmup_teacher_temp",
                     "model.layerscale_init", "optim.lr", "optim.end_lr_factor"}
  assert "dino.teacher_temp" in changed

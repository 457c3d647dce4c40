"""configs/bagnet.py: every variant builds; a BagNet trains on the eo-learn
sample and draws evidence heatmaps; init_from swaps in a new head."""
import itertools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest
import scipy.special

import eo_jax
from eo_jax import config as config_lib
from eo_jax.config import base_config
from eo_jax.data import bands as bands_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.evaluate.runner import save_figures
from eo_jax.models import bagnet as bagnet_lib
from eo_jax.models import build_model
from eo_jax.objectives import supervised
from eo_jax.objectives.base import TrainState
from eo_jax.train import trainer
from eo_jax.train.checkpoint import Checkpointer
from tiny import final_params, flat_params

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "configs", "bagnet.py")


def _module():
  return config_lib.config_module(_PATH)


CONFIG = _module()
# Bands each data variant reads (the model is built for them).
_BANDS = {"tiny_imagenet": bands_lib.RGB, "eurosat": bands_lib.RGB,
          "eurosat_all": bands_lib.SENTINEL2, "eolearn": bands_lib.SENTINEL2}
_DATA_NAMES = {"tiny_imagenet": ("tiny_imagenet", None),
               "eurosat": ("eurosat", "rgb"), "eurosat_all": ("eurosat", "all"),
               "eolearn": ("eolearn_sample", None)}


@pytest.mark.parametrize("model,data", itertools.product(CONFIG.MODELS, CONFIG.DATASETS))
def test_every_variant_builds_a_consistent_config(model, data):
  for opt, runlocal in itertools.product(CONFIG.OPTIMIZERS, (False, True)):
    c = CONFIG.get_config(f"model={model},data={data},opt={opt},runlocal={runlocal}")
    assert c.model.name == model and c.optim.name == opt
    name, variant = _DATA_NAMES[data]
    assert c.data.name == name and c.data.get("variant") == variant
    # The seed study's schedule: x0.1 every 7 epochs, whatever the optimiser.
    assert (c.optim.schedule, c.optim.step_every_epochs, c.optim.step_factor) == (
        "step", 7.0, 0.1)
    if opt == "sgd":
      assert c.optim.momentum == 0.9
    if model == "resnet18":
      assert c.model.low_res_stem
    else:
      # Inputs must hold at least one receptive field.
      assert c.input.image_size >= bagnet_lib.RECEPTIVE_FIELDS[model].size
    if runlocal:
      assert 0 < c.train.steps <= 10 and c.model.width <= 8
    # The model fields are ones the model factory takes.
    net = build_model(c.model, bands=_BANDS[data], num_classes=10)
    if model != "resnet18":
      assert net.rf == bagnet_lib.RECEPTIVE_FIELDS[model]


def test_variant_arguments_take_effect_and_bad_values_fail():
  c = CONFIG.get_config("model=bagnet33,data=tiny_imagenet,width_mult=0.25,"
                        "shallow=True,path=/data/tin,init_from=/runs/a")
  assert c.model.width == 16 and tuple(c.model.blocks) == (1, 1, 1, 1)
  assert c.data.path == "/data/tin" and c.init_from.workdir == "/runs/a"
  assert CONFIG.get_config("data=tiny_imagenet").model.width == 64
  assert tuple(CONFIG.get_config("data=eurosat").model.blocks) == (3, 4, 6, 3)
  assert CONFIG.get_config("opt=adadelta").optim.lr == 1.0
  for bad in ("model=vit", "data=imagenet", "opt=rmsprop", "width_mult=-1"):
    with pytest.raises(ValueError):
      CONFIG.get_config(bad)


def _tiny_objective(model_config):
  """A Supervised objective over a made-up 13-band, 3-class dataset."""
  config = base_config()
  config.model = ml_collections.ConfigDict(model_config)
  info = DatasetInfo(name="made_up", bands=bands_lib.SENTINEL2,
                     class_names=("water", "forest", "urban area"),
                     rgb_bands=("B04", "B03", "B02"))
  return supervised.Supervised(config, info)


def _init_state(objective, batch):
  init = jax.jit(lambda rng, b: tuple(vars(objective.init(rng, b)).values()))
  params, model_state, extra = init(jax.random.key(0), batch)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=model_state, opt_state=(), extra=extra)


def test_visualize_writes_true_and_predicted_class_heatmaps(tmp_path):
  objective = _tiny_objective({"name": "bagnet9", "width": 4, "blocks": (1, 1, 1, 1)})
  rng = np.random.default_rng(0)
  image = rng.normal(size=(6, 25, 25, 13)).astype(np.float32)
  state = _init_state(objective, {"image": image})
  logits, _ = jax.jit(objective.model.apply)(
      {"params": state.params, **state.model_state}, image)
  predicted = np.argmax(np.asarray(logits), -1)
  # Even examples are predicted right, odd ones wrong: both kinds of file.
  labels = np.where(np.arange(6) % 2 == 0, predicted, (predicted + 1) % 3)
  batch = {"image": image, "label": labels.astype(np.int32)}
  figures = objective.visualize(state, batch, 7)
  paths = save_figures(figures, str(tmp_path))
  names = ("water", "forest", "urban_area")
  expected = set()
  for i in range(supervised.HEATMAP_EXAMPLES):
    if i % 2 == 0:
      expected.add(f"ex{i}_true_pred_{names[labels[i]]}.png")
    else:
      expected.add(f"ex{i}_true_{names[labels[i]]}.png")
      expected.add(f"ex{i}_pred_{names[predicted[i]]}.png")
  assert {os.path.basename(p) for p in paths} == expected
  assert set(os.listdir(tmp_path / "heatmaps" / "val_step_000007")) == expected
  with Image.open(paths[0]) as png:
    assert png.size[0] > 500 and png.size[1] > 200
  # The final 'test' evaluation at the same step keeps the 'val' pictures.
  save_figures(objective.visualize(state, batch, 7, "test"), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "heatmaps")) == ["test_step_000007",
                                                        "val_step_000007"]


def test_visualize_skips_models_without_local_logits(tmp_path):
  objective = _tiny_objective({"name": "resnet", "stage_sizes": (1,), "width": 4,
                               "low_res_stem": True})
  batch = {"image": np.zeros((2, 8, 8, 13), np.float32),
           "label": np.zeros((2,), np.int32)}
  state = _init_state(objective, batch)
  assert objective.visualize(state, batch, 1) == {}


@pytest.fixture(scope="module")
def bagnet_run(tmp_path_factory):
  """A runlocal BagNet-17 trained on the embedded eo-learn sample."""
  workdir = tmp_path_factory.mktemp("bagnet17")
  config = CONFIG.get_config("model=bagnet17,data=eolearn,opt=sgd,runlocal=True")
  results = trainer.train_and_evaluate(config, str(workdir))
  return workdir, results, config


def _assert_test_metrics_recomputed(workdir, results, config):
  """The trainer's test accuracy and loss equal ones recomputed outside it.

  The state is the early-stopping checkpoint (what the trainer evaluated),
  the test split one unpadded batch, the metrics argmax accuracy and mean
  cross-entropy in numpy.
  """
  checkpointer = Checkpointer(str(workdir / "checkpoints_best"))
  assert checkpointer.latest_step() == results["evaluated_step"]
  params, model_state, _ = checkpointer.restore_params()
  checkpointer.close()
  dataset = build_dataset(config.data)
  n = len(dataset.split("test"))
  batch = next(iter(pipeline.eval_loader(dataset, "test", config.input,
                                         batch_size=n,
                                         image_size=config.input.image_size)))
  assert len(batch["label"]) == n
  model = build_model(config.model, bands=dataset.info.bands,
                      num_classes=dataset.info.num_classes)
  logits, _ = jax.jit(model.apply)({"params": params, **model_state},
                                   batch["image"])
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(batch["label"])
  accuracy = np.mean(logits.argmax(-1) == labels)
  loss = -np.mean(scipy.special.log_softmax(logits, -1)[np.arange(n), labels])
  assert results["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
  assert results["test"]["loss"] == pytest.approx(loss, rel=1e-5)


def test_runlocal_bagnet_trains_on_eolearn_and_draws_heatmaps(bagnet_run):
  workdir, results, config = bagnet_run
  assert results["step"] == 4
  _assert_test_metrics_recomputed(workdir, results, config)
  dataset = build_dataset(config.data, with_stats=False)
  names = dataset.info.class_names
  # Evaluations of 'val' at steps 2 and 4, then 'test' with the best state.
  best = results["evaluated_step"]
  splits = {"val_step_000002": "val", "val_step_000004": "val",
            f"test_step_{best:06d}": "test"}
  assert sorted(os.listdir(workdir / "heatmaps")) == sorted(splits)
  for folder, split in splits.items():
    pngs = sorted(os.listdir(workdir / "heatmaps" / folder))
    labels = dataset.split(split).labels[:supervised.HEATMAP_EXAMPLES]
    for i, label in enumerate(labels):
      truth = [p for p in pngs if p.startswith(f"ex{i}_true_")]
      assert len(truth) == 1, pngs
      assert truth[0].endswith(names[label].replace(" ", "_") + ".png"), truth
    with Image.open(workdir / "heatmaps" / folder / pngs[0]) as png:
      png.verify()


def test_init_from_copies_the_backbone_and_gives_a_new_head(bagnet_run):
  source, _, _ = bagnet_run
  config = CONFIG.get_config(
      f"model=bagnet17,data=eolearn,opt=sgd,runlocal=True,init_from={source}")
  # Five classes instead of four (keeps 'cultivated land'): the head cannot
  # be copied. The step-0 state the trainer would start from (build_run goes
  # through the same create_train_state) is checked; training it would only
  # compile another BagNet.
  config.data.min_class_pixels = 10
  before = final_params(str(source))
  after = flat_params(eo_jax.build_run(config).state.params)
  assert before.keys() == after.keys()
  heads = [k for k in after if k.startswith("head/")]
  assert heads and len(before) > len(heads) + 20
  for key in after:
    if key in heads:
      continue
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  assert before["head/kernel"].shape[-1] == 4
  assert after["head/kernel"].shape[-1] == 5
  assert np.std(after["head/kernel"]) > 0

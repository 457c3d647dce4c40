"""A new evaluator and a new backbone plug in through the registries alone:
nothing in eo_jax is edited, the trainer runs them and reports their numbers."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from eo_jax.data.datasets import build_dataset
from eo_jax.evaluate import EVALUATORS, EvalOutput, Evaluator
from eo_jax.models import MODELS
from eo_jax.models.backbone import Backbone
from eo_jax.train import trainer
from tiny import checkpoint_variables, direct_outputs, tiny_config


class MeanPoolNet(nn.Module):
  """A 1x1 conv and global average pooling: the smallest backbone."""
  num_classes: int
  width: int = 6

  @nn.compact
  def __call__(self, image, train: bool = False, mask=None):
    del train, mask
    x = nn.relu(nn.Conv(self.width, (1, 1), name="stem")(image))
    pooled = x.mean(axis=(1, 2))
    features = {"stem": x, "pre_logits": pooled}
    if not self.num_classes:
      return pooled, features
    return nn.Dense(self.num_classes, name="head")(pooled), features

  def dense_maps(self) -> dict[str, int]:
    return {"stem": 1}

  def layer_id(self, path: str) -> int:
    return 0 if path.startswith("stem") else 1

  def num_layers(self) -> int:
    return 1


@MODELS.register("test_mean_pool_net")
def mean_pool_net(*, bands, num_classes: int, width: int = 6) -> MeanPoolNet:
  del bands
  return MeanPoolNet(num_classes=num_classes, width=width)


@EVALUATORS.register("test_count")
class CountEvaluator(Evaluator):
  """How many examples the split has, and the summed logits of its first class."""

  def __init__(self, name: str, context: Any, *, scale: float = 1.0, **common):
    super().__init__(name, context, **common)
    self.scale = scale
    self._fn = context.objective.eval_fn("eval")

  def run(self, state, step: int) -> EvalOutput:
    count, total = 0, 0.0
    for outputs, _ in self.outputs(self._fn, state):
      count += len(outputs["label"])
      total += float(np.sum(outputs["logits"][:, 0]))
    return EvalOutput({"examples": count * self.scale, "logit0_sum": total}, {})


def test_a_toy_evaluator_and_a_toy_backbone_run_in_the_trainer(tmp_path):
  config = tiny_config(**{"train.steps": 4})
  config.unlock()
  config.model = ml_collections.ConfigDict(dict(name="test_mean_pool_net", width=5))
  config.evals.count = ml_collections.ConfigDict(dict(
      type="test_count", split="val", scale=2.0, every_steps=2))
  config.lock()
  results = trainer.train_and_evaluate(config, str(tmp_path))
  num_val = len(build_dataset(config.data).split("val"))
  assert results["count"]["examples"] == 2.0 * num_val
  # The sum of the final model's first logits over the split, computed directly.
  direct = direct_outputs(config, *checkpoint_variables(str(tmp_path)), "val")
  np.testing.assert_allclose(results["count"]["logit0_sum"],
                             direct["logits"][:, 0].sum(), rtol=1e-5)
  # The default evaluators ran beside it.
  assert set(results) >= {"val", "test", "count"}
  model = mean_pool_net(bands=(), num_classes=0)
  assert isinstance(model, Backbone)
  out, features = model.apply(model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2))),
                              jnp.ones((1, 4, 4, 2)))
  assert out.shape == (1, 6) and features["stem"].shape == (1, 4, 4, 6)

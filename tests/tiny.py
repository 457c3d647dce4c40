"""A tiny experiment (synthetic 4-band data, 2-stage ResNet) used by many tests.

Also a script, so that tests can run it in other processes (several CPU
devices, several jax.distributed processes, kill -9):

  python tests/tiny.py WORKDIR [--steps N] [--num_val N] [--num_test N]
      [--coordinator ADDR --num_processes P --process_id I]

It writes the final parameters to WORKDIR/params.npz, the final model state
(BatchNorm statistics) to WORKDIR/model_state.npz, both for every kept
checkpoint to WORKDIR/variables_<step>.npz, and every evaluation the trainer
reported, confusion matrices included, to WORKDIR/evaluations.json.

The second half is an independent evaluation: the model applied once to a
whole unpadded split, read straight from the dataset's source, and the
metrics recomputed in numpy, to check the trainer's padded, sharded
evaluation path against.
"""
from __future__ import annotations

import argparse
import json
import os

import ml_collections
import numpy as np

from eo_jax.config import base_config, set_dotted


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  c = base_config()
  c.data = ml_collections.ConfigDict(dict(
      name="synthetic", num_bands=4, num_classes=3, image_size=16, num_train=64,
      num_val=20, num_test=12, noise=0.3))
  c.model = ml_collections.ConfigDict(dict(
      name="resnet", stage_sizes=(1, 1), block="basic", width=8, low_res_stem=True))
  c.input.batch_size = 8
  c.input.augment.flips = True
  c.input.augment.rot90 = True
  c.optim.name = "adam"
  c.optim.lr = 3e-3
  c.optim.schedule = "cosine"
  c.train.epochs = 0
  c.train.steps = 12
  c.train.log_every_steps = 4
  c.train.eval_every_steps = 4
  c.train.progress_bar = False
  for key, value in overrides.items():
    set_dotted(c, key, value)
  c.lock()
  return c


class Crash(Exception):
  """A simulated crash raised from a trainer hook."""


def crash_at(step_to_crash: int):
  """A trainer hook that raises `Crash` once training reaches `step_to_crash`."""
  def hook(step, state):
    del state
    if step == step_to_crash:
      raise Crash(f"simulated crash at step {step}")
  return hook


def flat_params(state_params) -> dict[str, np.ndarray]:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(state_params)
  return {"/".join(k): np.asarray(v) for k, v in flat.items()}


def recording_reporter(records: list):
  """A trainer Reporter class that also appends each evaluation to `records`.

  Install it as `eo_jax.train.trainer.Reporter`. Each record is the full
  result the trainer reported (results.json keeps the scalars only, the
  confusion matrix only reaches the Reporter) plus 'step', 'split', 'final'.
  """
  from eo_jax.train.reporting import Reporter  # pylint: disable=g-import-not-at-top

  class RecordingReporter(Reporter):

    def eval_result(self, step, split, result, *, final=False):
      records.append({**result, "step": int(step), "split": split, "final": final})
      super().eval_result(step, split, result, final=final)

  return RecordingReporter


def last_evaluation(records: list, split: str, final: bool) -> dict:
  """The newest record of `split` (in-loop or final) in `records`."""
  matches = [r for r in records if r["split"] == split and r["final"] == final]
  assert matches, f"no {'final ' if final else ''}evaluation of {split!r} was reported"
  return matches[-1]


def _builtin(tree):
  if isinstance(tree, dict):
    return {k: _builtin(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_builtin(v) for v in tree]
  if isinstance(tree, (np.generic, np.ndarray)):
    return tree.tolist()
  return tree


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--num_val", type=int, default=20)
  parser.add_argument("--num_test", type=int, default=12)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from eo_jax.train import trainer  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"train.steps": args.steps, "input.batch_size": args.batch_size,
                          "data.num_val": args.num_val, "data.num_test": args.num_test})
  records = []
  trainer.Reporter = recording_reporter(records)
  results = trainer.train_and_evaluate(config, args.workdir)
  # Every process joins Orbax's restores. Another topology cannot restore
  # these checkpoints without a target, so the variables of every kept
  # checkpoint go to npz files too.
  kept = {step: checkpoint_variables(args.workdir, step=step)
          for step in _checkpoint_steps(args.workdir)}
  params, model_state = kept[max(kept)]
  if jax.process_index() == 0:
    np.savez(os.path.join(args.workdir, "params.npz"), **flat_params(params))
    np.savez(os.path.join(args.workdir, "model_state.npz"), **flat_params(model_state))
    for step, variables in kept.items():
      np.savez(os.path.join(args.workdir, f"variables_{step}.npz"),
               **flat_params({"params": variables[0], "model_state": variables[1]}))
    with open(os.path.join(args.workdir, "evaluations.json"), "w") as f:
      json.dump(_builtin(records), f)
    print("RESULTS", results)


def final_params(workdir: str) -> dict[str, np.ndarray]:
  """The parameters of the newest checkpoint in `workdir`, flattened."""
  return flat_params(checkpoint_variables(workdir)[0])


def _checkpoint_steps(workdir: str) -> list[int]:
  from eo_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  steps = checkpointer.all_steps()
  checkpointer.close()
  return sorted(steps)


def saved_variables(workdir: str, step: int) -> tuple[dict, dict]:
  """(params, model_state) of checkpoint `step`, as the script saved them."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  with np.load(os.path.join(workdir, f"variables_{step}.npz")) as f:
    tree = traverse_util.unflatten_dict({tuple(k.split("/")): f[k] for k in f.files})
  return tree["params"], tree.get("model_state", {})


def checkpoint_variables(workdir: str, checkpoints: str = "checkpoints",
                         step: int | None = None) -> tuple[dict, dict]:
  """(params, model_state) of checkpoint `step` (default: the newest) in
  workdir/`checkpoints`."""
  from eo_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  checkpointer = Checkpointer(os.path.join(workdir, checkpoints))
  params, model_state, _ = checkpointer.restore_params(step)
  checkpointer.close()
  return params, model_state


# ------------------------------------------------- Independent evaluation
def direct_outputs(config, params, model_state, split: str) -> dict[str, np.ndarray]:
  """The model applied once to every example of `split`, without padding.

  Reads the dataset's split source directly (not the eval loader), normalises
  with the bands' statistics and returns float64 'logits', 'features'
  (pre-logits) and the 'labels'.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from eo_jax.data.datasets import build_dataset  # pylint: disable=g-import-not-at-top
  from eo_jax.data.transforms import band_mean_std  # pylint: disable=g-import-not-at-top
  from eo_jax.models import build_model  # pylint: disable=g-import-not-at-top
  dataset = build_dataset(config.data)
  info = dataset.info
  source = dataset.split(split)
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(e["image"], np.float32) for e in examples])
  labels = np.array([int(e["label"]) for e in examples], np.int64)
  mean, std = band_mean_std(info.bands)
  model = build_model(config.model, bands=info.bands, num_classes=info.num_classes)
  logits, features = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      {"params": params, **model_state}, (images - mean) / std)
  return {"logits": np.asarray(logits, np.float64), "labels": labels,
          "features": np.asarray(features["pre_logits"], np.float64)}


def reference_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
  """Accuracy, macro-F1, per-class F1, mean cross-entropy, confusion matrix.

  From scratch in numpy (float64): predictions are the argmax of `scores`,
  the confusion matrix (rows = true class) counts (label, prediction) pairs,
  macro-F1 averages over the classes that occur in labels or predictions.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels, np.int64)
  preds = scores.argmax(-1)
  cm = np.bincount(labels * num_classes + preds,
                   minlength=num_classes * num_classes).reshape(num_classes, num_classes)
  tp = np.diag(cm).astype(np.float64)
  occurrences = cm.sum(0) + cm.sum(1)
  f1 = np.where(occurrences > 0, 2 * tp / np.maximum(occurrences, 1), 0.0)
  shifted = scores - scores.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return {"accuracy": float(np.sum(preds == labels) / len(labels)),
          "macro_f1": float(f1[occurrences > 0].mean()), "f1": f1,
          "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
          "confusion_matrix": cm}


def assert_metrics_equal(reported: dict, expected: dict, class_names, *,
                         loss_rtol: float = 1e-6) -> None:
  """`reported` (the trainer's scalars) against `reference_metrics` values.

  Counts decide accuracy and F1, so they must agree to rounding (one example
  more or less moves them by >= 1e-3); the loss differs only by float32
  rounding of the same logits.
  """
  assert reported["accuracy"] == expected["accuracy"], (reported, expected)
  np.testing.assert_allclose(reported["macro_f1"], expected["macro_f1"], rtol=1e-12)
  np.testing.assert_allclose([reported[f"f1/{n}"] for n in class_names], expected["f1"],
                             rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(reported["loss"], expected["loss"], rtol=loss_rtol)


if __name__ == "__main__":
  main()

"""The trainer's evaluation path against an independent evaluation.

The trainer cuts each split into padded, sharded batches and drops the padding
with a mask; here the same parameters are applied once to the whole unpadded
split (read from the dataset's source, not the eval loader) and the metrics
recomputed in numpy. Several devices and processes: test_distributed.py.
"""
import json

import numpy as np

from eo_jax.train import trainer
from tiny import (assert_metrics_equal, checkpoint_variables, direct_outputs,
                  last_evaluation, recording_reporter, reference_metrics, tiny_config)


def test_padded_evaluation_equals_direct_unpadded_evaluation(tmp_path, monkeypatch):
  # 20 val examples = batches of 8, 8 and 4 (+4 padding); 12 test = 8, 4 (+4).
  config = tiny_config(**{"train.steps": 8, "train.eval_every_steps": 8,
                          "input.eval_batch_size": 8,
                          "data.num_val": 20, "data.num_test": 12})
  records = []
  monkeypatch.setattr(trainer, "Reporter", recording_reporter(records))
  results = trainer.train_and_evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  # Early stopping is off: both splits were evaluated with the last state.
  params, model_state = checkpoint_variables(str(tmp_path))
  for split, final, size in (("val", False, 20), ("test", True, 12)):
    out = direct_outputs(config, params, model_state, split)
    assert len(out["labels"]) == size and size % 8  # the last batch is padded
    expected = reference_metrics(out["logits"], out["labels"], 3)
    # Half trained, the model errs on some examples and not others, so a wrong
    # set of examples shows in the counts.
    assert 0 < expected["accuracy"] < 1, expected
    recorded = last_evaluation(records, split, final)
    assert recorded["step"] == 8
    cm = np.asarray(recorded["confusion_matrix"])
    assert cm.sum() == size  # every example counted exactly once
    np.testing.assert_array_equal(cm, expected["confusion_matrix"])
    class_names = [f"class_{k}" for k in range(3)]
    for reported in (recorded, results[split], saved[split]):
      assert_metrics_equal(reported, expected, class_names)

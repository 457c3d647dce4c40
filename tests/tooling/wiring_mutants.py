"""Plants wiring bugs one at a time in scratch copies and checks the tests catch them.

  python tests/tooling/wiring_mutants.py            # every mutant
  python tests/tooling/wiring_mutants.py --only mae_loss_over_visible_patches
  python tests/tooling/wiring_mutants.py --list

Each mutant is a one-line change of the kind that passes a test checking
only finiteness or loose bounds (a schedule's final value where its current
one belongs, crops paired with the wrong images, a loss over the wrong mask,
an off-by-one in padding, a statistic from the wrong split). For each, the
repository's tracked files are copied to a temporary folder, the change is
applied there (never here), the named test files are run there, and the
mutant must make at least one of them fail. The report lists the tests that
failed for each mutant; a mutant whose text is no longer in the code is
reported as stale, so a refactor that moves the code shows up instead of
passing silently. Exit status 1 if any mutant survived or went stale.

The scratch copy imports its own eo_jax (PYTHONPATH and the working
directory point at it); each run prints which eo_jax it imported.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  path: str          # file to change, relative to the repository
  old: str           # text that must occur exactly once
  new: str
  tests: tuple[str, ...]  # pytest targets expected to catch it


MUTANTS = (
    Mutant("dino_final_teacher_temp_during_warmup",
           "eo_jax/objectives/dino.py",
           "temp = self.teacher_temp(state.step)",
           "temp = jnp.float32(s[\"teacher_temp\"])",
           ("tests/objectives/test_dino_objective.py",)),
    Mutant("dino_teacher_targets_at_final_temperature",
           "eo_jax/objectives/dino.py",
           "t_cls, center = self._teacher_targets(t_cls_logits, temp,",
           "t_cls, center = self._teacher_targets(t_cls_logits, float(s[\"teacher_temp\"]),",
           ("tests/objectives/test_dino_objective.py",)),
    Mutant("dino_student_sharpened_at_teacher_temperature",
           "eo_jax/objectives/dino.py",
           "                         float(s[\"student_temp\"]))\n    # Per global crop",
           "                         float(s[\"teacher_temp\"]))\n    # Per global crop",
           ("tests/objectives/test_dino_objective.py",)),
    Mutant("dino_global_crops_paired_with_wrong_images",
           "eo_jax/objectives/dino.py",
           "return jnp.swapaxes(crops, 0, 1).reshape((v * b,) + crops.shape[2:])",
           "return crops.reshape((v * b,) + crops.shape[2:])",
           ("tests/objectives/test_dino_objective.py",)),
    Mutant("dino_koleo_weighted_by_ibot_weight",
           "eo_jax/objectives/dino.py",
           "float(s[\"koleo_weight\"]) * koleo",
           "float(s[\"ibot_weight\"]) * koleo",
           ("tests/objectives/test_dino_objective.py",)),
    Mutant("dino_student_global_crops_unmasked",
           "eo_jax/objectives/dino.py",
           "s_features = self._backbone(student[\"backbone\"], globals_, mask=mask,",
           "s_features = self._backbone(student[\"backbone\"], globals_, mask=None,",
           ("tests/objectives/test_dino_objective.py",)),
    Mutant("dino_eval_at_warmup_temperature",
           "eo_jax/objectives/dino.py",
           "t_probs = jax.nn.softmax(t_logits / float(s[\"teacher_temp\"]), axis=-1)",
           "t_probs = jax.nn.softmax(t_logits / float(s[\"warmup_teacher_temp\"]), axis=-1)",
           ("tests/objectives/test_dino_objective.py",)),
    Mutant("dino_ema_momentum_of_the_next_update",
           "eo_jax/objectives/dino.py",
           "momentum = self.momentum(state.step - 1)",
           "momentum = self.momentum(state.step)",
           ("tests/objectives/test_dino_objective.py",)),
    Mutant("mae_loss_over_visible_patches",
           "eo_jax/objectives/mae.py",
           "per_example = masked_mse(pred, target, m.mask, valid)",
           "per_example = masked_mse(pred, target, 1.0 - m.mask, valid)",
           ("tests/objectives/test_mae.py",)),
    Mutant("mae_pixel_mse_against_normalised_targets",
           "eo_jax/objectives/mae.py",
           "\"pixel_mse\": masked_mse(pixels, raw, m.mask, valid)}",
           "\"pixel_mse\": masked_mse(pixels, target, m.mask, valid)}",
           ("tests/objectives/test_mae.py",)),
    Mutant("supervised_label_smoothing_dropped",
           "eo_jax/objectives/losses.py",
           "return cross_entropy(logits, labels, label_smoothing=loss_config.label_smoothing,",
           "return cross_entropy(logits, labels, label_smoothing=0.0,",
           ("tests/objectives/test_supervised.py",)),
    Mutant("supervised_class_weights_dropped_in_focal",
           "eo_jax/objectives/losses.py",
           "                      class_weights=weights, ignore_index=ignore_index)\n"
           "  return cross_entropy(",
           "                      class_weights=None, ignore_index=ignore_index)\n"
           "  return cross_entropy(",
           ("tests/objectives/test_supervised.py",)),
    Mutant("supervised_focal_gamma_fixed",
           "eo_jax/objectives/losses.py",
           "return focal_loss(logits, labels, gamma=loss_config.focal_gamma,",
           "return focal_loss(logits, labels, gamma=2.0,",
           ("tests/objectives/test_supervised.py",)),
    Mutant("supervised_eval_in_training_mode",
           "eo_jax/objectives/supervised.py",
           "                               batch[\"image\"], train=False)\n"
           "    # Plain cross-entropy",
           "                               batch[\"image\"], train=True)\n"
           "    # Plain cross-entropy",
           ("tests/objectives/test_supervised.py",)),
    Mutant("segmentation_loss_averaged_over_ignored_pixels_too",
           "eo_jax/objectives/segmentation.py",
           "count = jnp.maximum(jnp.sum(valid), 1)",
           "count = valid.size",
           ("tests/objectives/test_segmentation.py",)),
    Mutant("segmentation_aux_head_weight_ignored",
           "eo_jax/objectives/segmentation.py",
           "total = total + self.aux_weight * aux",
           "total = total + aux",
           ("tests/objectives/test_segmentation.py",)),
    Mutant("eval_padding_counts_one_padded_example",
           "eo_jax/evaluate/runner.py",
           "valid = np.arange(local_batch) < size",
           "valid = np.arange(local_batch) <= size",
           ("tests/train/test_eval_path.py",)),
    Mutant("reported_val_metrics_from_the_last_evaluation_not_the_reported_state",
           "eo_jax/train/trainer.py",
           "recorded = reporter.at_step(prefix, int(state.step))",
           "recorded = reporter.at_step(prefix, total_steps)",
           ("tests/train/test_restore.py",)),
    Mutant("restore_run_ignores_the_best_state",
           "eo_jax/train/restore.py",
           "if step is None and best and os.path.isdir(best_dir):",
           "if False:",
           ("tests/train/test_restore.py",)),
    Mutant("band_statistics_from_the_validation_split",
           "eo_jax/data/datasets/__init__.py",
           "stats_lib.band_statistics(dataset.split(\"train\"))",
           "stats_lib.band_statistics(dataset.split(\"val\"))",
           ("tests/data/test_build_dataset.py",)),
    Mutant("linear_probe_standardised_with_query_statistics",
           "eo_jax/evaluate/linear_probe.py",
           "q = (np.asarray(query, np.float32) - mean) / std",
           "q = np.asarray(query, np.float32)\n"
           "    q = (q - q.mean(0)) / (q.std(0) + 1e-6)",
           ("tests/evaluate/test_knn_linear_probe.py",)),
    Mutant("knn_votes_ignore_the_temperature",
           "eo_jax/evaluate/knn.py",
           "np.exp(sim.astype(np.float64) / temperature)",
           "np.exp(sim.astype(np.float64))",
           ("tests/evaluate/test_knn_linear_probe.py",)),
    Mutant("knn_probe_gets_the_wrong_temperature",
           "eo_jax/evaluate/probes.py",
           "k=self.k, temperature=self.temperature)",
           "k=self.k, temperature=1.0)",
           ("tests/evaluate/test_probes.py", "tests/train/test_trainer.py")),
    Mutant("second_process_reads_a_shifted_training_batch",
           "eo_jax/data/pipeline.py",
           "first = step * self._global_batch + process * self._local",
           "first = step * self._global_batch + process * (self._local - 1)",
           ("tests/data/test_pipeline.py", "tests/train/test_distributed.py")),
)


def copy_repository(destination: str) -> None:
  """Copies the tracked and untracked-but-not-ignored files of the checkout."""
  files = subprocess.run(
      ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
      cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
  for name in files:
    source = os.path.join(REPO, name)
    if not os.path.isfile(source):
      continue  # deleted in the work tree
    target = os.path.join(destination, name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(source, target)


def plant(root: str, mutant: Mutant) -> bool:
  """Applies `mutant` under `root`; False when its text is not found once."""
  path = os.path.join(root, mutant.path)
  with open(path) as f:
    text = f.read()
  if text.count(mutant.old) != 1:
    return False
  with open(path, "w") as f:
    f.write(text.replace(mutant.old, mutant.new))
  return True


def run_tests(root: str, targets: tuple[str, ...]) -> tuple[int, list[str], str]:
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.path.join(root, "tests"))
  check = subprocess.run(
      [sys.executable, "-c", "import eo_jax; print(eo_jax.__file__)"],
      cwd=root, env=env, capture_output=True, text=True, check=True).stdout.strip()
  if not check.startswith(root):
    raise RuntimeError(f"The scratch copy imported {check}, not its own eo_jax.")
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
       *targets], cwd=root, env=env, capture_output=True, text=True)
  failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
  return proc.returncode, failed, proc.stdout[-2000:]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", nargs="*", default=None,
                      help="names of the mutants to run (default: all)")
  parser.add_argument("--list", action="store_true", help="list the mutants")
  args = parser.parse_args()
  if args.list:
    for m in MUTANTS:
      print(f"{m.name:55s} {m.path}")
    return 0
  chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
  unknown = set(args.only or ()) - {m.name for m in MUTANTS}
  if unknown:
    parser.error(f"unknown mutants {sorted(unknown)}; see --list")
  bad = 0
  for mutant in chosen:
    with tempfile.TemporaryDirectory(prefix="eo_jax_mutant_") as root:
      copy_repository(root)
      start = time.perf_counter()
      if not plant(root, mutant):
        print(f"STALE    {mutant.name}: its text is not in {mutant.path} "
              "exactly once; update the mutant.")
        bad += 1
        continue
      code, failed, tail = run_tests(root, mutant.tests)
      seconds = time.perf_counter() - start
      if code == 0:
        bad += 1
        print(f"SURVIVED {mutant.name} ({seconds:.0f} s): "
              f"{' '.join(mutant.tests)} all passed")
      elif not failed:
        bad += 1
        print(f"ERROR    {mutant.name} ({seconds:.0f} s): pytest exit {code} "
              f"without failed tests:\n{tail}")
      else:
        print(f"CAUGHT   {mutant.name} ({seconds:.0f} s) by:")
        for test in failed:
          print(f"           {test}")
    sys.stdout.flush()
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())

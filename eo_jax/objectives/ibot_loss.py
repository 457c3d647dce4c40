"""iBOT's masked-patch loss (Zhou et al. 2022, as weighted in DINOv2).

The student sees a global crop with some patches replaced by the mask
token; the teacher sees it whole. For every masked patch, the teacher's
target distribution on that patch is compared with the student's:
CE(t, s) = -sum_k t_k log softmax(s / tau_s)_k.

Weighting (DINOv2's `forward_masked`): each masked patch weighs
1 / (number of masked patches of its image), so every masked image counts
once whatever its mask ratio; the weighted sum is divided by the number of
images IN THE BATCH, masked or not. Unmasked images (half of them by
default) thus add nothing to the numerator but do count in the denominator.

Static shapes: the masked patches sit in a fixed-size buffer per image (see
`block_masking.masked_patch_indices`) whose padding slots get weight 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from eo_jax.objectives.dino_loss import cross_entropy


def patch_weights(valid: jax.Array) -> jax.Array:
  """(B, M) weights 1 / n_masked(image) on valid slots, 0 on padding.

  Args:
    valid: (B, M) bool or 0/1: which buffer slots hold a masked patch.
  """
  valid = valid.astype(jnp.float32)
  count = jnp.sum(valid, axis=1, keepdims=True)
  return valid / jnp.maximum(count, 1.0)


def ibot_patch_loss(student_logits: jax.Array, teacher_probs: jax.Array,
                    valid: jax.Array,
                    student_temperature: float = 0.1) -> jax.Array:
  """The iBOT loss of a batch of images (see the module docstring).

  Args:
    student_logits: (B, M, K) student logits of each image's masked-patch
      buffer (B images, M slots).
    teacher_probs: (B, M, K) teacher targets of the same patches.
    valid: (B, M): which slots are real masked patches.
    student_temperature: tau_s (0.1).

  Returns:
    Scalar: sum over images of the mean cross-entropy over their masked
    patches, divided by B.
  """
  ce = cross_entropy(teacher_probs, student_logits, student_temperature)
  weights = patch_weights(valid)
  return jnp.sum(ce * weights) / ce.shape[0]

"""DINO's class-token loss: cross-entropy between crops of the same image.

For every image the teacher sees the global crops and the student sees the
global and the local crops. Each teacher crop's target distribution (centred
and sharpened, see centering.py) is compared with the student's distribution
on every OTHER crop:

  CE(t, s) = -sum_k t_k log softmax(s / tau_s)_k,

averaged over the batch for each (student crop, teacher crop) pair. With T
global and L local crops there are T * (T - 1) global pairs (a global crop
is never compared with itself) and T * L local ones; the pair losses are
summed and divided by T * (T - 1) + max(T * L, 1), as DINOv2 does. With
local crops that is the mean over the pairs; without them (L = 0) DINOv2
still adds 1 to the count, so two global crops give 2/3 of the mean of
their two pair losses, and so does this loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(teacher_probs: jax.Array, student_logits: jax.Array,
                  student_temperature: float) -> jax.Array:
  """-sum_k t_k log_softmax(s / tau_s)_k over the last axis, float32."""
  log_p = jax.nn.log_softmax(
      student_logits.astype(jnp.float32) / student_temperature, axis=-1)
  return -jnp.sum(teacher_probs.astype(jnp.float32) * log_p, axis=-1)


def pair_mask(num_student_crops: int, num_teacher_crops: int) -> jax.Array:
  """(S, T) float mask of the compared pairs: all but student i == teacher i.

  Student crops 0..T-1 are the global crops the teacher saw, in the same
  order; the rest are local crops.
  """
  if num_student_crops < num_teacher_crops:
    raise ValueError(f"{num_student_crops} student crops cannot include the "
                     f"{num_teacher_crops} teacher (global) crops.")
  same = jnp.eye(num_student_crops, num_teacher_crops, dtype=jnp.float32)
  return 1.0 - same


def dino_cls_loss(student_logits: jax.Array, teacher_probs: jax.Array,
                  student_temperature: float = 0.1) -> jax.Array:
  """The DINO loss over crop pairs and images (see the module docstring).

  Args:
    student_logits: (S, B, K) student prototype logits: crops 0..T-1 are the
      global crops (matching the teacher's), crops T..S-1 local crops.
    teacher_probs: (T, B, K) teacher targets (rows sum to 1).
    student_temperature: tau_s (DINO: 0.1).

  Returns:
    Scalar loss. The batch mean is over the whole (global) batch.
  """
  s, b, k = student_logits.shape
  t = teacher_probs.shape[0]
  if teacher_probs.shape[1:] != (b, k):
    raise ValueError(f"teacher_probs {teacher_probs.shape} do not match "
                     f"student_logits {student_logits.shape} in (B, K).")
  log_p = jax.nn.log_softmax(
      student_logits.astype(jnp.float32) / student_temperature, axis=-1)
  # (S, T): batch mean of the cross-entropy of every pair.
  per_pair = -jnp.einsum("tbk,sbk->st", teacher_probs.astype(jnp.float32),
                         log_p) / b
  num_local = s - t
  terms = t * (t - 1) + max(num_local * t, 1)
  return jnp.sum(per_pair * pair_mask(s, t)) / terms

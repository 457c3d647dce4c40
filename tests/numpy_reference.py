"""Independent numpy (float64) versions of the losses the objectives compose.

Written from the papers and the reference PyTorch code's formulas, not from
eo_jax: the wiring tests recompute a whole training loss with these from the
model's own outputs and compare it with the objective's value. Nothing here
imports eo_jax.
"""
from __future__ import annotations

import numpy as np


def f64(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def log_softmax(x, axis=-1) -> np.ndarray:
  x = f64(x)
  shifted = x - x.max(axis=axis, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x, axis=-1) -> np.ndarray:
  return np.exp(log_softmax(x, axis))


# ------------------------------------------------------------ supervised


def smoothed_onehot(labels, num_classes: int, smoothing: float) -> np.ndarray:
  """(1 - eps) on the true class plus eps / K everywhere."""
  onehot = np.eye(num_classes)[np.asarray(labels)]
  return onehot * (1.0 - smoothing) + smoothing / num_classes


def classification_loss(logits, labels, *, smoothing=0.0, gamma=0.0,
                        class_weights=None) -> np.ndarray:
  """Per-example -sum_k t_k (1 - p_k)^gamma log p_k, times w[label].

  gamma = 0 is cross-entropy. Class weights multiply each example's loss by
  its true class's weight (the batch mean is then taken over examples).
  """
  logp = log_softmax(logits)
  targets = smoothed_onehot(labels, logp.shape[-1], smoothing)
  loss = -(targets * (1.0 - np.exp(logp)) ** gamma * logp).sum(-1)
  if class_weights is not None:
    loss = loss * f64(class_weights)[np.asarray(labels)]
  return loss


# ------------------------------------------------------------------- MAE


def patchify(images, p: int) -> np.ndarray:
  """(B, H, W, C) -> (B, N, p*p*C), patches row-major, pixels (row, col, band)."""
  b, h, w, c = images.shape
  x = f64(images).reshape(b, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def norm_pix(patches, eps=1e-6) -> np.ndarray:
  """Each patch standardised by its mean and unbiased variance (torch.var)."""
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, ddof=1, keepdims=True)
  return (patches - mean) / np.sqrt(var + eps)


def masked_patch_mse(pred, target, mask) -> np.ndarray:
  """Per-example mean over masked patches (mask 1) of the per-patch MSE."""
  per_patch = ((f64(pred) - f64(target)) ** 2).mean(-1)
  mask = f64(mask)
  return (per_patch * mask).sum(1) / mask.sum(1)


# ---------------------------------------------------------------- DINOv2


def sinkhorn_knopp(logits, temperature: float, iterations: int = 3) -> np.ndarray:
  """DINOv2's `sinkhorn_knopp_teacher` on (R, K) rows: rows of the result sum to 1."""
  q = np.exp(f64(logits) / temperature).T          # (K, R)
  k, r = q.shape
  q /= q.sum()
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= r
  return (q * r).T


def cross_entropy(teacher_probs, student_logits, student_temp: float) -> np.ndarray:
  return -(f64(teacher_probs) * log_softmax(f64(student_logits) / student_temp)).sum(-1)


def dino_loss(student: list, teacher: list, student_temp: float) -> float:
  """DINOv2's class-token loss over crops.

  `student`: [global_0, global_1, local_0, ...] (B, K) logits; `teacher`:
  [global_0, global_1] (B, K) targets. Every student crop is compared with
  every teacher crop except itself; the sum of the batch-mean cross-entropies
  is divided by n_global_terms + max(n_local_terms, 1), as DINOv2 does.
  """
  n_global = len(teacher)
  n_local = len(student) - n_global
  total = 0.0
  for s, s_logits in enumerate(student):
    for t, t_probs in enumerate(teacher):
      if s != t:
        total += cross_entropy(t_probs, s_logits, student_temp).mean()
  return total / ((n_global - 1) * n_global + max(n_local * n_global, 1))


def koleo(features, eps=1e-8) -> float:
  """DINOv2's KoLeo: -mean log distance to the nearest other normalised row."""
  x = f64(features)
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
  dots = x @ x.T
  np.fill_diagonal(dots, -np.inf)
  nearest = dots.argmax(1)
  distance = np.linalg.norm(x - x[nearest], axis=-1)
  return float(-np.log(distance + eps).mean())


def ibot_loss(student_logits, teacher_probs, masks, student_temp: float) -> float:
  """iBOT's masked-patch loss: each masked image counts once, / all images.

  `student_logits` / `teacher_probs`: lists (one per image) of (n_i, K)
  arrays of that image's masked patches; `masks`: (B, N) bool.
  """
  total = 0.0
  for s, t in zip(student_logits, teacher_probs):
    if len(s):
      total += cross_entropy(t, s, student_temp).mean()
  return total / len(masks)


def cosine_schedule(start: float, end: float, total: float, step: float) -> float:
  return end + (start - end) * 0.5 * (1 + np.cos(np.pi * min(step / total, 1.0)))

"""Training speed: images per second, model FLOP/s and MFU.

The trainer logs, with every training average:

* 'train/images_per_second': global images per second (steps per second x
  the global batch);
* 'train/tflops_per_second': the train step's model FLOPs times steps per
  second, in TFLOP/s. The FLOPs come from XLA's cost analysis of the whole
  (global, not yet partitioned) step program, counted once after the first
  step: forward, backward, optimiser and whatever the objective does (a
  DINO teacher's forward pass included);
* 'train/mfu': that rate over the devices' peak (`device_peak_flops` x the
  number of devices), for devices in `PEAK_FLOPS`; left out elsewhere (CPU).

The rates cover the wall time between two logs, so the first average
includes compilation.
"""
from __future__ import annotations

from typing import Any, Callable

#: Dense peak FLOP/s per device, by a substring of `jax.Device.device_kind`,
#: from the vendors' data sheets. 'float32' on NVIDIA GPUs is the TF32
#: tensor-core rate, which XLA's default matmul precision uses there;
#: sparsity figures are not used. Longer keys are tried first ('H100 PCIe'
#: before 'H100').
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},     # SXM
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L40S": {"bfloat16": 362e12, "float32": 183e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "A10G": {"bfloat16": 70e12, "float32": 35e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v5": {"bfloat16": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12},
    "TPU v6e": {"bfloat16": 918e12},
}


#: The logged metrics that measure time, not training: they differ between
#: two runs of the same training (and after a resume).
TIMING_METRICS = ("train/steps_per_second", "train/images_per_second",
                  "train/tflops_per_second", "train/mfu")


def device_peak_flops(device_kind: str, dtype: str = "float32") -> float | None:
  """The dense peak FLOP/s of one device of `device_kind` computing in
  `dtype`, or None when the table does not know it (CPU, older GPUs)."""
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key.lower() in device_kind.lower():
      return PEAK_FLOPS[key].get(str(dtype))
  return None


def compute_dtype(config: Any) -> str:
  """The model's compute dtype ('float32' unless set): `config.model.dtype`,
  or its backbone's for models that nest one (segmentation)."""
  model = config.model
  if "dtype" in model:
    return str(model.dtype)
  if "backbone" in model and "dtype" in model.backbone:
    return str(model.backbone.dtype)
  return "float32"


def step_flops(jitted: Callable, *args: Any) -> float | None:
  """FLOPs of one call of the jitted function on `args` (whole program, all
  devices together) by XLA's cost analysis; None if the backend has none."""
  try:
    cost = jitted.lower(*args).cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None  # a backend without cost analysis: no FLOP figures
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or not cost.get("flops"):
    return None
  return float(cost["flops"])


def rates(steps_per_second: float, global_batch: int, flops: float | None,
          peak: float | None, num_devices: int) -> dict[str, float]:
  """The logged 'train/...' speed figures (see the module docstring)."""
  out = {"train/images_per_second": steps_per_second * global_batch}
  if flops:
    out["train/tflops_per_second"] = flops * steps_per_second / 1e12
    if peak:
      out["train/mfu"] = flops * steps_per_second / (peak * num_devices)
  return out

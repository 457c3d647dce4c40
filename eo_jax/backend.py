"""Which formulation of the backend-sensitive operations a run uses.

Some operations have two formulations in eo_jax: XLA's own op, and a
rewrite that is faster on XLA's CPU backend (measured there only):

* `im2col_max_size`: `layers.Conv` computes convolutions on maps no larger
  than this (height and width) as an explicit im2col matmul; 0 never does.
* `matmul_kernel_grad`: on larger maps `layers.Conv` keeps XLA's forward
  convolution but computes the kernel gradient by matmuls, one per tap.
* `im2col_kernel_grad_max_channels`: with `matmul_kernel_grad`, kernels
  larger than 1x1 on at most this many input channels get one matmul per
  chunk of images over their im2col patches instead (0: always per tap).
* `max_pool_views_grad`: `layers.MaxPool`'s gradient from shifted views
  instead of XLA's `select_and_scatter`.
* `unroll_kernel_grad_taps`: those per-tap matmuls unrolled instead of in a
  scan. Needed in multi-process runs: with the batch sharded, each tap ends
  in an all-reduce, and gloo (CPU collectives) aborts with a "collective
  mismatch" when those sit inside a while loop. Such runs also keep the
  per-tap form where the im2col chunks would apply (a scan as well).
* `partitionable_init_rng`: the threefry flavour that initialises the
  parameters (`init_rng_context`). The non-partitionable one compiles
  initialisers several times faster on CPU (21 s -> 3 s for a small ResNet);
  parameters are replicated, so nothing is lost. None leaves jax's setting.

`formulations()` decides, in this order: a `set_formulations` call, the
environment variable EO_JAX_FORMULATIONS, else 'auto'. The modes are 'cpu'
(the CPU rewrites), 'xla' (XLA's own ops and jax's default RNG) and 'auto'
('cpu' when jax's default backend is the CPU, else 'xla': the rewrites were
measured only on CPU). A `Formulations` value may be given instead of a mode
for finer A/B measurements.

The layers read the choice when a model is traced, so it must be made
before the function is traced (jit caches do not see it); for a change
within one process, trace a new function. `layers.override_formulations`
overrides it further, for the code traced inside its block.

XLA's own CPU convolutions. jax 0.10's CPU backend hands convolutions to
YNNPACK by default; XLA's other convolution code (Eigen) was 1.7-2.2x
faster at ResNet shapes on a 2-core CPU (7x7/2 stem on 13-band 128x128
images, batch 64: 122-136 ms vs 223-243 ms forward; 3x3 64->64 on 32x32
maps: 22-26 ms vs 39-60 ms; same machine, alternating processes), faster
than PyTorch's oneDNN for the stem's forward + kernel gradient, and its
kernel gradients are then faster than the matmul rewrites. So importing
eo_jax calls `configure_xla_cpu()`, which adds `CPU_XLA_FLAGS` to the
environment variable XLA_FLAGS (YNNPACK keeps the matmuls) unless XLA_FLAGS
already sets `xla_cpu_experimental_ynn_fusion_type` (yours is kept), the
mode is 'xla', or JAX has already started its backends (flags are read
once, at that moment). The flag changes the CPU backend only. The 'cpu'
mode then leaves kernel gradients to XLA (`matmul_kernel_grad` off); where
convolutions still run on YNNPACK (`ynn_convolutions()`), it keeps the
matmul kernel gradients that were measured faster there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import ContextManager, Iterator, Union

import jax

ENV_VAR = "EO_JAX_FORMULATIONS"
MODES = ("auto", "cpu", "xla")

# Largest map side the CPU mode computes as im2col. Measured with 3x3 convs
# at ResNet-18 widths, batch 64, on a 2-core CPU (jax 0.10.2), im2col vs
# nn.Conv: 2x2 maps (512 ch) 60-100x faster forward and forward+backward;
# 4x4 maps 1.2-2x faster forward, 1-17x forward+backward (a strided 4x4
# conv's backward hits the slow path too); 8x8 maps 0.7-1.0x forward,
# 1.1-1.4x forward+backward; 16x16 maps 2.5x slower.
CPU_IM2COL_MAX_SIZE = 4

# Where convolutions run on YNNPACK (`ynn_convolutions()`): most input
# channels for which the CPU mode computes the kernel gradient
# of a kernel larger than 1x1 as im2col matmuls over chunks of images
# (`layers.conv_matmul_kernel_grad`'s 'im2col' form) instead of one matmul
# per tap. Forward + gradients at ResNet-18's shapes, batch 64, 2-core CPU
# (jax 0.10.2), per tap / per chunk over two runs of `python -m
# benchmarks.stem_conv --rule`: stem 7x7/2 13->64 1.5-1.7x; 3x3 64->64 on
# 32x32 maps 1.4x; 128->128 on 16x16 1.1-1.2x; strided 3x3 64->128 on
# 32x32 and 128->256 on 16x16 0.9-1.0x; 256->256 on 8x8 1.0x (0.86x in a
# sweep of an earlier version), so 256 channels stay per tap.
CPU_IM2COL_KERNEL_GRAD_MAX_CHANNELS = 128


@dataclasses.dataclass(frozen=True)
class Formulations:
  """One choice per backend-sensitive operation (module docstring)."""
  im2col_max_size: int
  matmul_kernel_grad: bool
  max_pool_views_grad: bool
  unroll_kernel_grad_taps: bool
  partitionable_init_rng: bool | None
  # Last, with a default, so that positional constructions made before it
  # existed keep their meaning (kernel gradients per tap).
  im2col_kernel_grad_max_channels: int = 0

  def __post_init__(self):
    for name in ("im2col_max_size", "im2col_kernel_grad_max_channels"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")


# The XLA flag that lists what XLA's CPU backend hands to YNNPACK, and the
# setting `configure_xla_cpu` adds: every default except convolutions.
YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_XLA_FLAGS = f"--{YNN_FUSION_FLAG}=-individual_convolution"
_YNN_CONVOLUTION = "individual_convolution"


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a jax without it: assume not
    return False


def configure_xla_cpu(environ: dict[str, str] | None = None) -> bool:
  """Adds `CPU_XLA_FLAGS` to XLA_FLAGS; returns whether it did.

  Leaves XLA_FLAGS alone when it already sets the YNNPACK flag, when the
  formulations mode (EO_JAX_FORMULATIONS) is 'xla', or when JAX's backends
  have started (too late for flags). Called when eo_jax is imported.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  if YNN_FUSION_FLAG in flags:
    return False
  if environ.get(ENV_VAR, "auto").strip().lower() == "xla":
    return False
  if _backends_started():
    return False
  environ["XLA_FLAGS"] = f"{flags} {CPU_XLA_FLAGS}".strip()
  return True


def ynn_convolutions(environ: dict[str, str] | None = None) -> bool:
  """Whether XLA_FLAGS leaves CPU convolutions to YNNPACK (jax's default).

  Reads the last `--xla_cpu_experimental_ynn_fusion_type=` in XLA_FLAGS as
  XLA does: an empty value hands nothing to YNNPACK, '+name' / '-name'
  entries add to / remove from the default set (which has convolutions),
  plain names replace it.
  """
  environ = os.environ if environ is None else environ
  values = re.findall(rf"--{YNN_FUSION_FLAG}=(\S*)",
                      environ.get("XLA_FLAGS", ""))
  if not values:
    return True
  entries = [e.strip().lower().replace("library_fusion_type_", "")
             for e in values[-1].split(",") if e.strip()]
  if not entries:
    return False
  if any(e[0] not in "+-" for e in entries):
    return _YNN_CONVOLUTION in entries
  on = True
  for e in entries:
    if e[1:] == _YNN_CONVOLUTION:
      on = e[0] == "+"
  return on


Choice = Union[str, Formulations]

# Set by `set_formulations`; None defers to the environment variable.
_choice: Choice | None = None


def _multi_process() -> bool:
  return jax.process_count() > 1


def cpu_formulations() -> Formulations:
  """The CPU rewrites (what 'auto' gives on a CPU backend).

  Kernel gradients by matmuls only where convolutions run on YNNPACK
  (`ynn_convolutions()`); XLA's own kernel gradients are faster otherwise.
  """
  return Formulations(im2col_max_size=CPU_IM2COL_MAX_SIZE,
                      matmul_kernel_grad=ynn_convolutions(),
                      max_pool_views_grad=True,
                      unroll_kernel_grad_taps=_multi_process(),
                      partitionable_init_rng=False,
                      im2col_kernel_grad_max_channels=(
                          CPU_IM2COL_KERNEL_GRAD_MAX_CHANNELS))


def xla_formulations() -> Formulations:
  """XLA's own ops and jax's configured RNG (what 'auto' gives on GPU/TPU)."""
  # The unrolled taps stay the safe choice should matmul_kernel_grad be
  # switched on by an override in a multi-process run.
  return Formulations(im2col_max_size=0, matmul_kernel_grad=False,
                      max_pool_views_grad=False,
                      unroll_kernel_grad_taps=_multi_process(),
                      partitionable_init_rng=None,
                      im2col_kernel_grad_max_channels=0)


def _check_mode(mode: str, where: str) -> str:
  if mode not in MODES:
    raise ValueError(f"{where} is {mode!r}; use one of {MODES}.")
  return mode


def _resolve(mode: str) -> Formulations:
  if mode == "auto":
    mode = "cpu" if jax.default_backend() == "cpu" else "xla"
  return cpu_formulations() if mode == "cpu" else xla_formulations()


def formulations() -> Formulations:
  """The formulations in force (see the module docstring for the order)."""
  choice = _choice
  if choice is None:
    choice = _check_mode(os.environ.get(ENV_VAR, "auto").strip().lower(),
                         f"The environment variable {ENV_VAR}")
  if isinstance(choice, Formulations):
    return choice
  return _resolve(choice)


def set_formulations(choice: Choice | None) -> Choice | None:
  """Sets the process-wide choice; returns the previous one (to restore).

  Args:
    choice: 'auto', 'cpu', 'xla', a `Formulations`, or None to defer to the
      environment variable again. Affects functions traced afterwards.
  """
  global _choice
  if isinstance(choice, str):
    choice = _check_mode(choice, "set_formulations' choice")
  elif choice is not None and not isinstance(choice, Formulations):
    raise TypeError(f"set_formulations takes a mode in {MODES}, a "
                    f"Formulations or None; got {type(choice).__name__}.")
  previous, _choice = _choice, choice
  return previous


@contextlib.contextmanager
def use_formulations(choice: Choice | None) -> Iterator[Formulations]:
  """`set_formulations(choice)` for the duration of a `with` block."""
  previous = set_formulations(choice)
  try:
    yield formulations()
  finally:
    set_formulations(previous)


def init_rng_context() -> ContextManager:
  """The RNG setting to enclose parameter initialisation (tracing included).

  Use as `with backend.init_rng_context(): params = jax.jit(init)(key, x)`.
  """
  partitionable = formulations().partitionable_init_rng
  if partitionable is None:
    return contextlib.nullcontext()
  return jax.threefry_partitionable(partitionable)

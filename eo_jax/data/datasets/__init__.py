"""Datasets by name, returned with their training-split band statistics.

`build_dataset(config.data)` calls the factory registered as
`config.data.name` with every other field of `config.data` as a keyword
argument, selects bands by name (`config.data.bands`: a tuple of names, a
'B04,B03' string, or None / () for all), and fills each band's mean and std
from the TRAIN split (exact, float64, computed once per process for the same
config). The dataset's `config_key` records that config, so that
`eo_jax.data.validate.validate_dataset` reads it once per process too.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from typing import Any, Mapping, Sequence

import numpy as np

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import stats as stats_lib
from eo_jax.data.datasets import cifar as _cifar  # noqa: F401  (registers)
from eo_jax.data.datasets import cube as _cube  # noqa: F401  (registers)
from eo_jax.data.datasets import eolearn as _eolearn  # noqa: F401  (registers)
from eo_jax.data.datasets import eurosat as _eurosat  # noqa: F401  (registers)
from eo_jax.data.datasets import hyperspectral as _hyperspectral  # noqa: F401  (registers)
from eo_jax.data.datasets import s2_scene as _s2_scene  # noqa: F401  (registers)
from eo_jax.data.datasets import synthetic as _synthetic  # noqa: F401  (registers)
from eo_jax.data.datasets import tiny_imagenet as _tiny_imagenet  # noqa: F401  (registers)
from eo_jax.data.datasets import whu_ohs as _whu_ohs  # noqa: F401  (registers)
from eo_jax.data.datasets.base import (DATASETS, DataError, Dataset,
                                       DatasetInfo, MissingDataError, Source,
                                       describe_example)

__all__ = ["DATASETS", "DataError", "Dataset", "DatasetInfo",
           "MissingDataError", "build_dataset", "clear_stats_cache",
           "select_bands"]

_STATS_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


class BandSelectedSource:
  """A view of a source that keeps only some channels, in a given order."""

  def __init__(self, source: Source, channels: Sequence[int]):
    self._source = source
    self._channels = np.asarray(channels, np.int64)

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"BandSelected({self._source!r}, {self._channels.tolist()})"

  def describe(self, index: int) -> str:
    """Where the wrapped source's example `index` comes from."""
    return describe_example(self._source, index)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = dict(self._source[index])
    example["image"] = np.ascontiguousarray(example["image"][..., self._channels])
    return example


def select_bands(dataset: Dataset, wanted: Sequence[str] | None) -> Dataset:
  """Keeps the bands named in `wanted` (in that order); None/() keeps all."""
  if not wanted:
    return dataset
  wanted = tuple(wanted)
  info = dataset.info
  chosen = bands_lib.select(info.bands, wanted)
  channels = bands_lib.indices(info.bands, wanted)
  if list(channels) == list(range(len(info.bands))):
    return dataset
  rgb = info.rgb_bands if all(b in wanted for b in info.rgb_bands) else ()
  info = dataclasses.replace(info, bands=chosen, rgb_bands=rgb)
  splits = {k: BandSelectedSource(v, channels) for k, v in dataset.splits.items()}
  return Dataset(info=info, splits=splits)


def _plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if isinstance(value, list):
    return tuple(value)
  return value


def _config_kwargs(data_config: Any) -> tuple[str, dict[str, Any]]:
  fields = (data_config.to_dict() if hasattr(data_config, "to_dict")
            else dict(data_config))
  fields = {k: _plain(v) for k, v in fields.items()}
  if "name" not in fields:
    raise KeyError("config.data has no `name`; set config.data.name to one of "
                   f"{DATASETS.names()}.")
  return fields.pop("name"), fields


def _check_kwargs(name: str, factory: Any, kwargs: Mapping[str, Any]) -> None:
  params = inspect.signature(factory).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return
  unknown = sorted(set(kwargs) - set(params))
  if unknown:
    # Config overrides may add any data.* field (config.set_dotted); this is
    # where a misspelt one is caught, so say what was probably meant.
    guesses = [f"{m[0]!r} for {u!r}" for u in unknown
               for m in [difflib.get_close_matches(u, list(params), n=1)] if m]
    hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    raise errors.ConfigTypeError(
        f"config.data for dataset {name!r} has unknown field(s) {unknown}"
        f"{hint}; {name!r} takes {sorted(params)} (plus `bands`). Remove or "
        "rename the field.")


def _band_names(wanted: Any) -> Any:
  """`config.data.bands` as a tuple of names: a command-line override gives
  'B04,B03' (or 'B04+B03', as configs/eurosat.py's argument) as one string,
  which would otherwise be taken letter by letter."""
  if isinstance(wanted, str):
    return tuple(n.strip() for n in re.split(r"[,+]", wanted) if n.strip())
  return wanted


def clear_stats_cache() -> None:
  """Forgets the band statistics computed so far in this process."""
  _STATS_CACHE.clear()


def build_dataset(data_config: Any, *, with_stats: bool = True,
                  validate: bool = False) -> Dataset:
  """Builds `config.data.name` with band selection and train-split statistics.

  Args:
    data_config: `config.data` (a ConfigDict or mapping) with `name` and the
      factory's keyword arguments; `bands` (names) may select bands.
    with_stats: fill band mean/std from the train split (skipped for bands
      that already carry statistics from the factory).
    validate: first read and check every example of every split
      (`eo_jax.data.validate.validate_dataset`, once per process and
      config), so that a bad file fails here, as one `DataError` naming
      all of them, rather than mid-run.

  Returns:
    The Dataset; `info.bands` carry mean/std when `with_stats`.

  Raises:
    DataError: with `validate`, for unusable examples.
  """
  name, kwargs = _config_kwargs(data_config)
  factory = DATASETS.get(name)
  if "bands" in kwargs:
    kwargs["bands"] = _band_names(kwargs["bands"])
  wanted = kwargs.get("bands")
  factory_selects = "bands" in inspect.signature(factory).parameters
  if not factory_selects:
    kwargs.pop("bands", None)
  _check_kwargs(name, factory, kwargs)
  dataset = factory(**kwargs)
  if not factory_selects:
    dataset = select_bands(dataset, wanted)
  key = repr((name, sorted(kwargs.items()), wanted))
  dataset.config_key = key
  if validate:
    # Before the statistics, which read the train split and would stop at
    # its first bad file; validation names every one. Imported here because
    # validate.py imports this package's base module.
    from eo_jax.data.validate import validate_dataset  # pylint: disable=g-import-not-at-top
    validate_dataset(dataset)
  info = dataset.info
  if not with_stats or all(b.mean is not None and b.std is not None
                           for b in info.bands):
    return dataset
  if "train" not in dataset.splits:
    raise ValueError(f"Dataset {name!r} has no 'train' split to compute band "
                     f"statistics from; it has {sorted(dataset.splits)}.")
  if key not in _STATS_CACHE:
    _STATS_CACHE[key] = stats_lib.band_statistics(dataset.split("train"))
  mean, std = _STATS_CACHE[key]
  bands = tuple(b.with_stats(m, s) for b, m, s in zip(info.bands, mean, std))
  dataset.info = dataclasses.replace(info, bands=bands)
  return dataset

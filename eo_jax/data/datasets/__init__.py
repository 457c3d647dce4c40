"""Datasets by name, returned with their training-split band statistics.

`build_dataset(config.data)` calls the factory registered as
`config.data.name` with every other field of `config.data` as a keyword
argument, selects bands by name (`config.data.bands`: a tuple of names, or
None / () for all), and fills each band's mean and std from the TRAIN split
(exact, float64, computed once per process for the same config).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping, Sequence

import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data import stats as stats_lib
from eo_jax.data.datasets import eolearn as _eolearn  # noqa: F401  (registers)
from eo_jax.data.datasets import eurosat as _eurosat  # noqa: F401  (registers)
from eo_jax.data.datasets import s2_scene as _s2_scene  # noqa: F401  (registers)
from eo_jax.data.datasets import synthetic as _synthetic  # noqa: F401  (registers)
from eo_jax.data.datasets import tiny_imagenet as _tiny_imagenet  # noqa: F401  (registers)
from eo_jax.data.datasets import whu_ohs as _whu_ohs  # noqa: F401  (registers)
from eo_jax.data.datasets.base import (DATASETS, Dataset, DatasetInfo,
                                       MissingDataError, Source)

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "MissingDataError",
           "build_dataset", "clear_stats_cache", "select_bands"]

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
    raise TypeError(
        f"config.data for dataset {name!r} has unknown field(s) {unknown}; "
        f"{name!r} takes {sorted(params)} (plus `bands`). Remove or rename the "
        "field.")


def clear_stats_cache() -> None:
  """Forgets the band statistics computed so far in this process."""
  _STATS_CACHE.clear()


def build_dataset(data_config: Any, *, with_stats: bool = True) -> Dataset:
  """Builds `config.data.name` with band selection and train-split statistics.

  Args:
    data_config: `config.data` (a ConfigDict or mapping) with `name` and the
      factory's keyword arguments; `bands` (names) may select bands.
    with_stats: fill band mean/std from the train split (skipped for bands
      that already carry statistics from the factory).

  Returns:
    The Dataset; `info.bands` carry mean/std when `with_stats`.
  """
  name, kwargs = _config_kwargs(data_config)
  factory = DATASETS.get(name)
  wanted = kwargs.get("bands")
  factory_selects = "bands" in inspect.signature(factory).parameters
  if not factory_selects:
    kwargs.pop("bands", None)
  _check_kwargs(name, factory, kwargs)
  dataset = factory(**kwargs)
  if not factory_selects:
    dataset = select_bands(dataset, wanted)
  info = dataset.info
  if not with_stats or all(b.mean is not None and b.std is not None
                           for b in info.bands):
    return dataset
  if "train" not in dataset.splits:
    raise ValueError(f"Dataset {name!r} has no 'train' split to compute band "
                     f"statistics from; it has {sorted(dataset.splits)}.")
  key = repr((name, sorted(kwargs.items()), wanted))
  if key not in _STATS_CACHE:
    _STATS_CACHE[key] = stats_lib.band_statistics(dataset.split("train"))
  mean, std = _STATS_CACHE[key]
  bands = tuple(b.with_stats(m, s) for b, m, s in zip(info.bands, mean, std))
  dataset.info = dataclasses.replace(info, bands=bands)
  return dataset

"""Grain input pipelines: endless shuffled training batches, exact eval passes.

A Grain record here is a whole batch, not an example: the examples are tiny
(a 9 x 9 x 13 patch costs ~10 us to read), so Grain's per-record bookkeeping
would dominate; building batches inside the source pays it once per batch,
and Grain still provides the prefetch threads, the training worker processes
(`config.input.worker_count`), per-process sharding and checkpointable state.

Training (`train_loader`): every epoch is a fresh permutation of the WHOLE
train split (seeded by `seed` and the epoch number), cut into
`steps_per_epoch` global batches (each epoch drops a different remainder).
Process p of n gets the p-th contiguous 1/n of every global batch. Each
example's augmentation draws from a generator keyed by (seed, stream
position), so every batch is a pure function of the seed and the step: the
iterator's `get_state()` / `set_state()` (a small JSON blob, also
Orbax-checkpointable) restores exactly the same next batches.

Evaluation (`eval_loader`): the split in order, no augmentation, each
process reading one contiguous shard; the last batch may be short. All
processes yield the same number of batches (a process whose shard runs out
first yields an empty batch), so multi-host collectives stay in step.

Examples (the dataset contract, `datasets/base.py`) are dicts of arrays in
raw units: 'image' (H, W, C) is required, and EVERY other key is carried
into the batch under the same name (a key whose value is None is absent).
What happens to a key depends on its shape:

* spatial: rank 2 or 3 with the first two dimensions equal to the image's
  (H, W), e.g. 'mask' (H, W), a 'weight' map (H, W), a 'dem' (H, W, 1).
  It goes through exactly the image's geometry (resize, random resized
  crop, flips, rot90) with the same random draws, so its pixels stay
  aligned with the image's: integer and bool arrays are resampled
  nearest-neighbour and keep their dtype, floating arrays bilinearly and
  become float32; other dtypes, and arrays of rank > 3 whose first two
  dimensions are (H, W), are errors (they could not follow the image).
* anything else (scalars, vectors, arrays whose leading dimensions differ
  from the image's): stacked unchanged along a new batch axis.

Only 'image' is normalised with the bands' statistics. Two names keep
their fixed meaning and dtype: 'mask' must be spatial and is batched as
int32 (nearest, whatever its dtype), 'label' is never spatial and is
batched as int32. Every example of a split must carry the same keys, with
the same shapes after resizing; a mismatch is an error naming the key and
the examples.

Batches are dicts of numpy arrays: 'image' (B, H, W, C) float32 normalised
with the bands' training statistics, 'label' (B,) int32 and/or 'mask'
(B, H, W) int32 when the dataset has them, and every other key of the
examples, stacked.

Multi-view objectives (DINO) pass `views_fn` to `train_loader` (the trainer
passes `objective.train_views()`): each training image is then resized and
normalised but not augmented, `views_fn(image, rng)` turns it into views
(e.g. `data.multicrop.MultiCrop`), and the batch carries the stacked views
('global_crops' (B, 2, G, G, C), ...) instead of 'image'. `rng` is the same
per-example generator the standard augmentations would have used, so
determinism and the iterator state are unchanged. The non-spatial keys and
'mask' (resized, not augmented) are carried as without views. The other
spatial keys are dropped, with one warning when the loader is built: no
single array can stay aligned with several independently cropped views, a
misaligned one would be silently wrong, and failing instead would forbid
pre-training on any dataset that ships such maps for a supervised task
(a multi-view objective only reads its views).

The augmentation options come from `config.input.augment` alone, whose
schema and defaults are `eo_jax.config.base_config()`'s: every key there
must be given (a missing or unknown key is an error), so there is no second
set of defaults here that could disagree with the config.
"""
from __future__ import annotations

import math

import sys
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import grain.python as grain
import jax
import numpy as np

from eo_jax import config as config_lib
from eo_jax.data import transforms
from eo_jax.data.datasets.base import Dataset

Batch = dict[str, np.ndarray]
Example = dict[str, np.ndarray]
ViewsFn = Callable[[np.ndarray, np.random.Generator], Mapping[str, np.ndarray]]


def _get(config: Any, key: str, default: Any) -> Any:
  value = config.get(key, default) if hasattr(config, "get") else getattr(
      config, key, default)
  return default if value is None else value


def _augment_options(input_config: Any) -> dict[str, Any]:
  """`config.input.augment` as a dict, checked against the config schema.

  The schema is `base_config().input.augment`, and the pipeline adds no
  defaults of its own: a caller building the input config by hand must say
  what it wants rather than silently get the pipeline's idea of a default.
  """
  known = sorted(config_lib.base_config().input.augment)
  augment = _get(input_config, "augment", None)
  if augment is None:
    raise KeyError(f"config.input has no 'augment'; start from "
                   f"eo_jax.config.base_config().input (keys {known}).")
  augment = augment.to_dict() if hasattr(augment, "to_dict") else dict(augment)
  unknown = sorted(set(augment) - set(known))
  if unknown:
    raise KeyError(f"config.input.augment has unknown keys {unknown}; known: "
                   f"{known}.")
  missing = sorted(set(known) - set(augment))
  if missing:
    raise KeyError(f"config.input.augment lacks keys {missing}; start from "
                   f"eo_jax.config.base_config().input.augment.")
  return augment


def _image_size(dataset: Dataset, input_config: Any,
                image_size: int | tuple[int, int] | None
                ) -> tuple[int, int] | None:
  size = image_size or _get(input_config, "image_size", 0)
  if size:
    return transforms.size_pair(size)
  return dataset.info.image_size


def _process(process_index: int | None, process_count: int | None
             ) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} not in [0, {count}).")
  return index, count


def _local_batch(global_batch: int, process_count: int, what: str) -> int:
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(
        f"{what} {global_batch} must be a positive multiple of the number of "
        f"processes ({process_count}); change {what}.")
  return global_batch // process_count


def run_length(dataset: Dataset, config: Any) -> tuple[int, int]:
  """(steps per epoch, total steps) of a run of `config` on `dataset`:
  `config.train.steps` when set, else `config.train.epochs` epochs."""
  per_epoch = steps_per_epoch(dataset, config.input)
  total = config.train.steps or math.ceil(config.train.epochs * per_epoch)
  return per_epoch, int(total)


def steps_per_epoch(dataset: Dataset, input_config: Any) -> int:
  """Number of full global batches in one pass over the train split."""
  n = len(dataset.split("train"))
  batch = _get(input_config, "batch_size", 0)
  steps = n // batch if batch > 0 else 0
  if steps == 0:
    raise ValueError(
        f"config.input.batch_size={batch} is larger than the train split of "
        f"{dataset.info.name!r} ({n} examples); lower the batch size.")
  return steps


class StreamSampler:
  """Record i is i: the batch sources below decode what i means.

  Grain's DataLoader asks process p of n for sampler indices p, p + n,
  p + 2n, ...; so record k * n + p is process p's part of global batch k.
  """

  def __init__(self, name: str, num_records: int | None = None):
    self._name = name
    self._num_records = num_records

  def __repr__(self) -> str:
    return f"StreamSampler({self._name}, num_records={self._num_records})"

  def __len__(self) -> int:
    return sys.maxsize if self._num_records is None else self._num_records

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if self._num_records is not None and not 0 <= index < self._num_records:
      raise IndexError(f"Record {index} out of range [0, {self._num_records}).")
    return grain.RecordMetadata(index=index, record_key=index)


def example_rng(seed: int, position: int) -> np.random.Generator:
  """The augmentation generator of stream position `position`."""
  return np.random.Generator(np.random.Philox(key=[seed, position]))


class _KeyedRng:
  """`example_rng(seed, g)` for many g, re-keying one Philox (3x cheaper than
  building a new bit generator per example)."""

  def __init__(self, seed: int):
    self._seed = seed
    self._bitgen = np.random.Philox(key=[seed, 0])
    self._generator = np.random.Generator(self._bitgen)

  def __call__(self, position: int) -> np.random.Generator:
    self._bitgen.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.zeros(4, np.uint64),
                  "key": np.array([self._seed, position], np.uint64)},
        "buffer": np.zeros(4, np.uint64), "buffer_pos": 4,
        "has_uint32": 0, "uinteger": 0}
    return self._generator


def augment(image: np.ndarray, spatial: Mapping[str, np.ndarray] | None,
            rng: np.random.Generator, size: tuple[int, int] | None,
            options: Mapping[str, Any]
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """The training geometry of one example, in raw units (no normalisation).

  Every array of `spatial` (keyed by name, first two dimensions the image's)
  gets the image's crop box, flips and rotation, resampled with
  `transforms.resize_method` of its dtype. The draws depend on the image
  alone, so adding a spatial key never changes the image's augmentation.

  Returns:
    (image, spatial): the float32 image and the transformed spatial arrays.
  """
  spatial = dict(spatial) if spatial else {}
  if options["random_resized_crop"]:
    height, width = image.shape[:2]
    box = transforms.sample_crop_box(rng, height, width, options["crop_scale"],
                                     options["crop_ratio"])
    out = size or (height, width)
    image = transforms.crop_and_resize(image, box, out, "bilinear")
    spatial = {k: transforms.crop_and_resize(
        v, box, out, transforms.resize_method(v.dtype))
               for k, v in spatial.items()}
  else:
    image, spatial = _resize(image, spatial, size)
  if options["flips"]:
    left_right, up_down = transforms.sample_flips(rng)
    image = transforms.flip(image, left_right, up_down)
    spatial = {k: transforms.flip(v, left_right, up_down)
               for k, v in spatial.items()}
  if options["rot90"]:
    k = transforms.sample_rot90(rng, image.shape[0], image.shape[1])
    image = transforms.rot90(image, k)
    spatial = {name: transforms.rot90(v, k) for name, v in spatial.items()}
  return image, spatial


def _resize(image: np.ndarray, spatial: dict[str, np.ndarray],
            size: tuple[int, int] | None
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  if size is not None and image.shape[:2] != tuple(size):
    image = transforms.resize(image, size, "bilinear")
    spatial = {k: transforms.resize(v, size, transforms.resize_method(v.dtype))
               for k, v in spatial.items()}
  return image, spatial


class _BatchSource:
  """Builds whole batches (Grain's per-record overhead paid once per batch)."""

  _views_fn: ViewsFn | None = None

  def __init__(self, dataset: Dataset, split: str,
               size: tuple[int, int] | None):
    self._source = dataset.split(split)
    self._name = f"{dataset.info.name}/{split}"
    self._mean, self._std = transforms.band_mean_std(dataset.info.bands)
    self._num_bands = dataset.info.num_bands
    self._size = size
    self._template = self._stack([(0, self._example(0, None))])
    if self._views_fn is not None:
      # Said once here, in the main process, rather than by every Grain
      # worker for every example.
      dropped = self._views_dropped(0)
      if dropped:
        logging.warning(
            "%s: the multi-view objective's batches drop the spatial keys "
            "%s: they cannot stay aligned with independently cropped views.",
            self._name, dropped)

  def _image(self, index: int, element: Mapping[str, Any]) -> np.ndarray:
    image = np.asarray(element["image"])
    if image.ndim != 3 or image.shape[-1] != self._num_bands:
      raise ValueError(
          f"{self._name} example {index} has image shape {image.shape}; the "
          f"dataset declares {self._num_bands} bands (H, W, C expected).")
    return image

  def _split_keys(self, index: int, element: Mapping[str, Any],
                  image_hw: tuple[int, ...]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(spatial, carried) arrays of an example: see the module docstring."""
    spatial, carried = {}, {}
    for key, value in element.items():
      if key == "image" or value is None:
        continue
      if key == "label":
        carried[key] = value  # `_stack` makes the int32 array of a batch
        continue
      value = np.asarray(value)
      if value.shape[:2] == image_hw:
        if value.ndim > 3:
          raise ValueError(
              f"{self._name} example {index} has {key!r} of shape "
              f"{value.shape}: its first two dimensions are the image's but "
              "spatial arrays must be (H, W) or (H, W, K).")
        spatial[key] = self._spatial(index, key, value)
      elif key == "mask":
        raise ValueError(
            f"{self._name} example {index} has 'mask' of shape {value.shape} "
            f"but image size {tuple(image_hw)}; a mask must be (H, W) or "
            "(H, W, K) like its image.")
      else:
        carried[key] = value
    return spatial, carried

  def _spatial(self, index: int, key: str, value: np.ndarray) -> np.ndarray:
    if key == "mask":
      # Class ids: int32 in every batch (and cast before the geometry, which
      # only moves values, so nearest resampling applies whatever the dtype).
      return value.astype(np.int32, copy=False)
    try:
      method = transforms.resize_method(value.dtype)
    except TypeError as e:
      raise TypeError(f"{self._name} example {index}, key {key!r}: {e}") from e
    # Bilinear resampling returns float32 anyway; casting first makes the
    # dtype the same whether or not the example gets resized.
    if method == "bilinear":
      return value.astype(np.float32, copy=False)
    return value

  def _views_dropped(self, index: int) -> list[str]:
    """The spatial keys that a multi-view batch drops ('mask' is kept)."""
    element = self._source[int(index)]
    spatial, _ = self._split_keys(index, element,
                                  self._image(index, element).shape[:2])
    return sorted(k for k in spatial if k != "mask")

  def _example(self, index: int, rng: np.random.Generator | None) -> Example:
    element = self._source[int(index)]
    image = self._image(index, element)
    spatial, carried = self._split_keys(index, element, image.shape[:2])
    if rng is None:
      image, spatial = _resize(image, spatial, self._size)
    elif self._views_fn is not None:
      # The views do their own cropping and colour changes, on normalised
      # values (their strengths are in units of the band std). 'mask' is
      # carried resized, as it always was; the other spatial keys could not
      # follow the views and are dropped (warned about in `__init__`).
      spatial = {k: v for k, v in spatial.items() if k == "mask"}
      image, spatial = _resize(image, spatial, self._size)
      views = self._views(index, (np.asarray(image, np.float32) - self._mean)
                          / self._std, rng, {**spatial, **carried})
      return {**views, **spatial, **carried}
    else:
      image, spatial = augment(image, spatial, rng, self._size, self._options)
    return {"image": image, **spatial, **carried}

  def _views(self, index: int, image: np.ndarray, rng: np.random.Generator,
             carried: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    views = self._views_fn(image, rng)
    if not isinstance(views, Mapping) or not views:
      raise TypeError(
          f"views_fn must return a non-empty dict of arrays, got "
          f"{type(views).__name__} for {self._name} example {index}.")
    clash = sorted(set(views) & set(carried))
    if clash:
      raise ValueError(f"views_fn returned {clash}, which the batch already "
                       "carries; rename those views.")
    views = {k: np.asarray(v) for k, v in views.items()}
    # Floating views become float32; others (e.g. boolean patch masks) keep
    # their dtype.
    return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating)
            else v for k, v in views.items()}

  def _stack(self, examples: list[tuple[int, Example]], views: bool = False
             ) -> Batch:
    """One batch from (index, example) pairs; `views`: examples are views,
    already normalised, rather than raw images."""
    if not examples:
      return {k: np.zeros((0,) + v.shape[1:], v.dtype)
              for k, v in self._template.items()}
    first_index, first = examples[0]
    for index, example in examples[1:]:
      if example.keys() != first.keys():
        raise ValueError(
            f"{self._name} example {index} has keys {sorted(example)} but "
            f"example {first_index} has {sorted(first)}; every example must "
            "carry the same keys.")
    batch = {}
    for key in first:
      values = [example[key] for _, example in examples]
      try:
        if key == "label":
          batch[key] = np.array(values, np.int32)
        else:
          batch[key] = np.stack(values)
      except ValueError as e:
        # One example per distinct shape: a batch may hold hundreds.
        shapes = {}
        for index, example in examples:
          shapes.setdefault(np.shape(example[key]), index)
        found = ", ".join(f"{shape} in example {index}"
                          for shape, index in shapes.items())
        if key == "image" and not views:
          raise ValueError(
              f"{self._name}: examples of different sizes cannot be batched "
              f"(image {found}); set config.input.image_size.") from e
        raise ValueError(
            f"{self._name}: key {key!r} has different shapes in one batch "
            f"({found}); every example must give it the same shape.") from e
    if "image" in batch and not views:
      batch["image"] = (batch["image"].astype(np.float32) - self._mean
                        ) / self._std
    return batch


class TrainBatches(_BatchSource):
  """Record k * n + p -> process p's share of global training batch k.

  Global batch k is positions [k * B, (k + 1) * B) of the stream; process p
  takes the contiguous part [p * B / n, (p + 1) * B / n) of it. Position g is
  example perm_e[g % E] of epoch e = g // E, where E = steps * B and perm_e is
  a permutation of the whole split seeded by (seed, e); its augmentation
  generator (or `views_fn`'s generator) is keyed by (seed, g).
  """

  def __init__(self, dataset: Dataset, size: tuple[int, int] | None, *,
               steps: int, global_batch: int, process_count: int, seed: int,
               options: Mapping[str, Any], views_fn: ViewsFn | None = None):
    if seed < 0:
      raise ValueError(f"config.seed must be >= 0, got {seed}.")
    self._options = dict(options)
    self._views_fn = views_fn
    super().__init__(dataset, "train", size)
    self._epoch_length = steps * global_batch
    self._global_batch = global_batch
    self._count = process_count
    self._local = global_batch // process_count
    self._seed = int(seed)
    self._cached: tuple[int, np.ndarray] | None = None

  def __len__(self) -> int:
    return sys.maxsize

  def __repr__(self) -> str:
    return (f"TrainBatches({self._name}, n={len(self._source)}, "
            f"epoch={self._epoch_length}, batch={self._global_batch}, "
            f"processes={self._count}, seed={self._seed})")

  def _permutation(self, epoch: int) -> np.ndarray:
    cached = self._cached  # read once: Grain may call from several threads
    if cached is None or cached[0] != epoch:
      perm = np.random.default_rng([self._seed, epoch]).permutation(
          len(self._source))
      cached = self._cached = (epoch, perm)
    return cached[1]

  def positions(self, record: int) -> np.ndarray:
    """Stream positions of the examples in `record`."""
    step, process = divmod(int(record), self._count)
    first = step * self._global_batch + process * self._local
    return np.arange(first, first + self._local)

  def indices(self, record: int) -> np.ndarray:
    """Split indices of the examples in `record`."""
    epoch, offset = np.divmod(self.positions(record), self._epoch_length)
    # A batch never straddles epochs: E is a multiple of the global batch.
    return self._permutation(int(epoch[0]))[offset]

  def __getitem__(self, record: int) -> Batch:
    rng = _KeyedRng(self._seed)  # one per call: Grain threads run in parallel
    examples = [(i, self._example(i, rng(int(g))))
                for i, g in zip(self.indices(record), self.positions(record))]
    return self._stack(examples, views=self._views_fn is not None)


class EvalBatches(_BatchSource):
  """Record b -> batch b of this process's contiguous shard [start, end)."""

  def __init__(self, dataset: Dataset, split: str,
               size: tuple[int, int] | None, *, start: int, end: int,
               local_batch: int, num_batches: int):
    super().__init__(dataset, split, size)
    self.start, self.end = start, end
    self._local = local_batch
    self._num_batches = num_batches

  def __len__(self) -> int:
    return self._num_batches

  def __repr__(self) -> str:
    return (f"EvalBatches({self._name}[{self.start}:{self.end}], "
            f"batch={self._local})")

  def __getitem__(self, record: int) -> Batch:
    first = self.start + int(record) * self._local
    last = min(self.end, first + self._local)
    return self._stack([(i, self._example(i, None))
                        for i in range(first, last)])


def _read_options(input_config: Any) -> grain.ReadOptions:
  # Records are whole batches: `prefetch` threads build the next batches
  # while the trainer's jitted step (which releases the GIL) runs.
  prefetch = max(0, int(_get(input_config, "prefetch", 2)))
  return grain.ReadOptions(num_threads=prefetch,
                           prefetch_buffer_size=prefetch)


def train_loader(dataset: Dataset, input_config: Any, *, seed: int,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 image_size: int | tuple[int, int] | None = None,
                 views_fn: ViewsFn | None = None) -> grain.DataLoader:
  """Endless, shuffled, augmented training batches for this process.

  Args:
    dataset: a Dataset whose bands carry mean/std (`build_dataset`).
    input_config: `config.input` (batch_size is the GLOBAL batch; augment,
      with every key of `base_config().input.augment`; image_size,
      worker_count, prefetch).
    seed: shuffling and augmentation seed (>= 0).
    process_index, process_count: this process and how many read in
      parallel; default `jax.process_index()` / `jax.process_count()`.
    image_size: output side(s); default `input_config.image_size`, and if that
      is 0 the dataset's native size.
    views_fn: optional `views_fn(image, rng) -> {name: array}` for objectives
      that train on several views per example (`Objective.train_views`). It
      gets each resized, normalised, NOT augmented (H, W, C) float32 image
      and that example's generator (re-keyed for the next example after the
      call returns: do not keep it), and must return arrays of fixed shapes.
      It must be picklable when `input_config.worker_count` > 0.

  Returns:
    A Grain DataLoader; `iter(loader)` yields {'image': (B_local, H, W, C)
    float32, 'label': (B_local,) int32 | 'mask': (B_local, H, W) int32, and
    every other key of the examples (see the module docstring)} forever,
    B_local = batch_size / process_count, and has `get_state()` /
    `set_state(state)`. With `views_fn`, each view `name` replaces 'image'
    as `name`: (B_local, *view_shape), float32 when floating; spatial keys
    other than 'mask' are dropped.
  """
  index, count = _process(process_index, process_count)
  global_batch = int(_get(input_config, "batch_size", 0))
  _local_batch(global_batch, count, "config.input.batch_size")
  batches = TrainBatches(
      dataset, _image_size(dataset, input_config, image_size),
      steps=steps_per_epoch(dataset, input_config), global_batch=global_batch,
      process_count=count, seed=seed, options=_augment_options(input_config),
      views_fn=views_fn)
  return grain.DataLoader(
      data_source=batches,
      sampler=StreamSampler(f"{dataset.info.name}/train"),
      worker_count=int(_get(input_config, "worker_count", 0)),
      shard_options=grain.ShardOptions(index, count, drop_remainder=True),
      read_options=_read_options(input_config),
  )


class EvalLoader:
  """A finite, re-iterable pass over this process's shard of a split.

  Each pass builds batches in threads of this process, ignoring
  `worker_count`: worker processes would be started afresh for every pass
  (seconds each, mostly importing jax), which costs more than an eval pass
  over these datasets saves.
  """

  def __init__(self, batches: EvalBatches, input_config: Any):
    self._batches = batches
    threads = max(2, int(_get(input_config, "prefetch", 2)))
    self._read_options = grain.ReadOptions(num_threads=threads,
                                           prefetch_buffer_size=threads)

  def __len__(self) -> int:
    return len(self._batches)

  @property
  def shard(self) -> tuple[int, int]:
    """The [start, end) range of the split this process reads."""
    return self._batches.start, self._batches.end

  def __iter__(self) -> Iterator[Batch]:
    loader = grain.DataLoader(
        data_source=self._batches,
        sampler=StreamSampler(repr(self._batches), len(self._batches)),
        worker_count=0,
        shard_options=grain.NoSharding(),
        read_options=self._read_options,
    )
    return iter(loader)


def eval_loader(dataset: Dataset, split: str, input_config: Any, *,
                process_index: int | None = None,
                process_count: int | None = None,
                batch_size: int | None = None,
                image_size: int | tuple[int, int] | None = None) -> EvalLoader:
  """Every example of `split` exactly once over all processes, in order.

  Args:
    dataset: a Dataset whose bands carry mean/std.
    split: e.g. 'val' or 'test'.
    input_config: `config.input` (eval_batch_size, image_size, prefetch;
      `augment` is not read: evaluation never augments).
    process_index, process_count: default from jax.
    batch_size: THIS PROCESS's batch size. Default: the global eval batch
      (`input_config.eval_batch_size`, or `batch_size` when that is 0) divided
      by the number of processes.
    image_size: as for `train_loader`.

  Returns:
    An EvalLoader: `len()` batches per pass, the same on every process, with
    the keys `train_loader`'s batches have (resized, not augmented). The
    process reads the contiguous range `shard` of the split (shard sizes
    differ by at most one); its last batch may be short, and a process whose
    shard is shorter may end with an empty batch (leading dimension 0).
  """
  index, count = _process(process_index, process_count)
  if batch_size:
    local_batch = int(batch_size)
  else:
    global_batch = _get(input_config, "eval_batch_size", 0) or _get(
        input_config, "batch_size", 0)
    local_batch = _local_batch(int(global_batch), count,
                               "config.input.eval_batch_size")
  if local_batch <= 0:
    raise ValueError(f"The eval batch size must be positive, got {local_batch}.")
  n = len(dataset.split(split))
  per, extra = divmod(n, count)
  start = index * per + min(index, extra)
  end = start + per + (1 if index < extra else 0)
  num_batches = -(-(per + (1 if extra else 0)) // local_batch)
  batches = EvalBatches(dataset, split,
                        _image_size(dataset, input_config, image_size),
                        start=start, end=end, local_batch=local_batch,
                        num_batches=num_batches)
  return EvalLoader(batches, input_config)

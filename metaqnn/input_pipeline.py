"""Data sets for MetaQNN: whole splits as NumPy uint8 arrays, plus in-jit normalisation.

Every data set fits in host memory (the largest, SVHN's train split, is ~225 MB as uint8), so
`load` reads each split once into arrays and the trainer batches from them. The validation
split is carved from the training split, stratified and seeded (SPEC section 4).

  digits   scikit-learn's 8x8 digits (offline; the embedded default).
  mnist, cifar10, cifar100, svhn (`svhn_cropped`): tensorflow-datasets, read through
           `tfds.data_source` from data prepared in array_record format (see BUILD.md,
           "Preparing data sets"); TensorFlow is not needed to read them.

Nothing heavy happens at import time; tensorflow_datasets is imported only when a tfds data
set is loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from metaqnn.errors import UserError

# config.dataset.name -> tensorflow-datasets builder name.
TFDS_NAMES = {
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "svhn": "svhn_cropped",
}
KNOWN = ("digits",) + tuple(TFDS_NAMES)

# digits has no official test split: a stratified 20% is held out with this fixed seed, so the
# test set is the same whatever config.seed is (results across seeds stay comparable).
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 20170101

PREPROCESS = ("mean", "gcn")

# Stream tags for np.random.default_rng([seed, tag]): independent draws per purpose.
_VAL_TAG = 1
_SUBSET_TAG = 2


class DatasetError(Exception):
  """A user-facing data problem; str() is one line that says what to do."""


@dataclasses.dataclass
class Dataset:
  """One data set in memory: images uint8 [N, H, W, C] as stored, labels int32 [N]."""
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  preprocess: str
  mean: np.ndarray  # float32 [C], per-channel mean of train_images / 255.


# ---------------------------------------------------------------------------------------------
# Normalisation (inside jit).


def normalize(images: Any, preprocess: str, mean: Any) -> Any:
  """uint8 [..., H, W, C] -> float32 in the network's input scale; jit-friendly.

  Pixels are first scaled to [0, 1]. Then
    'mean': subtract the per-channel training mean `mean` ([C]); the paper's "global mean
            subtraction" (SPEC section 4, MNIST/SVHN).
    'gcn':  global contrast normalisation, per image: (x - m) / max(s, 1 / sqrt(n)), with m, s
            the image's own mean and standard deviation over its n = H*W*C values. The floor
            1/sqrt(n) (as in tf.image.per_image_standardization) keeps flat images finite (they
            become all zeros) and caps the gain on near-flat ones. `mean` is unused.
  `preprocess` must be a Python string (static under jit).
  """
  import jax.numpy as jnp  # Local: keeps `import metaqnn.input_pipeline` cheap.

  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  if preprocess == "mean":
    return x - jnp.asarray(mean, jnp.float32)
  if preprocess == "gcn":
    axes = (-3, -2, -1)
    n = x.shape[-3] * x.shape[-2] * x.shape[-1]
    m = jnp.mean(x, axis=axes, keepdims=True)
    s = jnp.sqrt(jnp.mean(jnp.square(x - m), axis=axes, keepdims=True))
    return (x - m) / jnp.maximum(s, 1.0 / np.sqrt(n))
  raise UserError(f"unknown preprocess {preprocess!r}; known: {', '.join(PREPROCESS)}")


# ---------------------------------------------------------------------------------------------
# Splits.


def stratified_split(labels: np.ndarray, n_take: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Indices (taken, rest) with `n_take` taken so each class keeps its share (largest remainder).

  Both index arrays are sorted, so the examples keep their stored order.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if not 0 <= n_take <= n:
    raise UserError(f"cannot take {n_take} of {n} examples")
  classes, counts = np.unique(labels, return_counts=True)
  quota = counts * (n_take / n)
  take = np.floor(quota).astype(np.int64)
  short = n_take - int(take.sum())
  if short:
    # Largest fractional parts first; ties broken at random (seeded), not by class order.
    frac = quota - take
    order = np.lexsort((rng.random(len(classes)), -frac))
    take[order[:short]] += 1
  taken = []
  for c, k in zip(classes, take):
    idx = np.flatnonzero(labels == c)
    taken.append(rng.permutation(idx)[:k])
  taken = np.sort(np.concatenate(taken)) if taken else np.zeros(0, np.int64)
  mask = np.ones(n, bool)
  mask[taken] = False
  return taken, np.flatnonzero(mask)


def _check_config(ds) -> None:
  """Config values that are wrong whatever the data: one-line DatasetError."""
  tf_ = float(ds.get("train_fraction", 1.0))
  if not 0.0 < tf_ <= 1.0:
    raise DatasetError(
        f"config.dataset.train_fraction={tf_} must be in (0, 1]; use 1.0 for the whole set.")
  vf = float(ds.get("val_fraction", 0.0))
  if not 0.0 <= vf < 1.0:
    raise DatasetError(
        f"config.dataset.val_fraction={vf} must be in (0, 1), or 0 to use val_size instead.")
  if vf == 0.0 and int(ds.get("val_size", 0)) < 1:
    raise DatasetError(
        f"config.dataset.val_size={ds.get('val_size')} must be >= 1 "
        "(or set config.dataset.val_fraction > 0).")
  pp = ds.get("preprocess", "mean")
  if pp not in PREPROCESS:
    raise DatasetError(
        f"config.dataset.preprocess={pp!r} is unknown; use one of: {', '.join(PREPROCESS)}.")


def _split(config, name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
           test_y: np.ndarray, num_classes: int, final: bool) -> Dataset:
  """Carve validation (and the train_fraction subset) out of the training split."""
  ds = config.dataset
  seed = int(config.seed)
  n = len(train_y)
  empty_x = np.zeros((0,) + train_x.shape[1:], np.uint8)
  empty_y = np.zeros((0,), np.int32)
  if final:
    # Final training: all of train (validation included); train_fraction is a search setting.
    tr_x, tr_y, va_x, va_y = train_x, train_y, empty_x, empty_y
  else:
    vf = float(ds.get("val_fraction", 0.0))
    n_val = int(round(vf * n)) if vf > 0 else int(ds.val_size)
    if not 1 <= n_val < n:
      what = f"val_fraction={vf}" if vf > 0 else f"val_size={ds.val_size}"
      raise DatasetError(
          f"config.dataset.{what} gives {n_val} validation examples but {name}'s training "
          f"split has {n}; choose a value that leaves both splits non-empty.")
    val_idx, rest = stratified_split(train_y, n_val, np.random.default_rng([seed, _VAL_TAG]))
    tf_ = float(ds.get("train_fraction", 1.0))
    if tf_ < 1.0:
      n_keep = max(1, int(round(tf_ * len(rest))))
      keep, _ = stratified_split(train_y[rest], n_keep,
                                 np.random.default_rng([seed, _SUBSET_TAG]))
      rest = rest[keep]
    tr_x, tr_y = train_x[rest], train_y[rest]
    va_x, va_y = train_x[val_idx], train_y[val_idx]
  mean = (tr_x.reshape(-1, tr_x.shape[-1]).mean(axis=0, dtype=np.float64) / 255.0)
  return Dataset(
      name=name,
      train_images=tr_x, train_labels=tr_y.astype(np.int32),
      val_images=va_x, val_labels=va_y.astype(np.int32),
      test_images=test_x, test_labels=test_y.astype(np.int32),
      num_classes=int(num_classes),
      preprocess=str(ds.get("preprocess", "mean")),
      mean=mean.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Sources.


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
  """scikit-learn digits as uint8 [N, 8, 8, 1] (0..16 rescaled to 0..255), fixed 20% test."""
  from sklearn.datasets import load_digits  # Ships with scikit-learn: no download.

  d = load_digits()
  x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  y = d.target.astype(np.int32)
  test_idx, train_idx = stratified_split(
      y, int(round(DIGITS_TEST_FRACTION * len(y))), np.random.default_rng(DIGITS_TEST_SEED))
  return x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10


def load(config, final: bool = False) -> Dataset:
  """The data set named by `config.dataset.name`, split for the search (or final training).

  final=False: train (optionally a stratified `train_fraction` subset), a stratified seeded
  validation split of `val_size` examples (or `val_fraction` of train), and test.
  final=True: train = the whole training split (validation included), val empty, test.
  Raises DatasetError (one line) for unknown names, bad split settings or missing data.
  """
  ds = config.dataset
  name = ds.name
  if name not in KNOWN:
    raise DatasetError(
        f"unknown data set {name!r} (config.dataset.name); known: {', '.join(KNOWN)}.")
  _check_config(ds)
  if name == "digits":
    tr_x, tr_y, te_x, te_y, k = _digits()
  else:
    # SVHN's final training also uses the 531,131 "extra" images (SPEC section 4).
    extra = final and bool(ds.get("final_extra", False))
    tr_x, tr_y, te_x, te_y, k = _tfds(name, ds, extra)
  return _split(config, name, tr_x, tr_y, te_x, te_y, k, final)


# Records read per `__getitems__` call: batched reads from array_record, bounded memory.
_READ_CHUNK = 4096


def _prepare_hint(tfds_name: str) -> str:
  """The one command that prepares `tfds_name` readably for `load`, and where it is explained."""
  return (f"on a machine with network run `pip install tensorflow && tfds build {tfds_name} "
          f"--file_format=array_record --data_dir=DIR`, copy DIR here and pass "
          f"--config.dataset.data_dir=DIR (BUILD.md, \"Preparing data sets\")")


def _tfds(name: str, ds, extra: bool = False
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
  """train (plus "extra" if asked) and test splits of a tensorflow-datasets set, read
  without TensorFlow."""
  try:
    import tensorflow_datasets as tfds  # Lazy: digits users never pay for it.
  except ImportError as e:
    raise DatasetError(
        f"{name} needs tensorflow-datasets ({e}); run `pip install -r requirements.txt`.") from None
  tfds_name = TFDS_NAMES[name]
  data_dir = ds.data_dir or None
  download = bool(ds.download)
  failure = None
  try:
    # file_format is passed explicitly: tfds.data_source only defaults to array_record when no
    # data_dir is given, and download=True would otherwise prepare unreadable TFRecords.
    train_src, test_src, *extra_src = tfds.data_source(
        tfds_name, split=["train", "test"] + (["extra"] if extra else []), data_dir=data_dir,
        download=download, builder_kwargs={"file_format": "array_record"})
  except (KeyError, NotImplementedError, ValueError, FileNotFoundError) as e:
    # tfds reports missing or TFRecord-only data in several ways (KeyError: no splits;
    # NotImplementedError: no random-access format; ...). Explained below; others re-raised.
    failure = e
  except ImportError as e:
    # download=True: preparing (encoding the images) imports TensorFlow.
    raise DatasetError(
        f"{name}: preparing {tfds_name} needs TensorFlow ({e}); {_prepare_hint(tfds_name)}, "
        "or `pip install tensorflow` here.") from None
  except OSError as e:  # Includes requests' ConnectionError: no network.
    raise DatasetError(
        f"{name}: downloading {tfds_name} failed ({type(e).__name__}); "
        f"{_prepare_hint(tfds_name)}.") from None
  except Exception as e:  # pylint: disable=broad-except
    # tfds' own download failures (DownloadError, NonMatchingChecksumError, ExtractError) have
    # no common base class; match them by module so that real bugs still surface.
    if not (download and type(e).__module__.startswith("tensorflow_datasets.core.download")):
      raise
    first = str(e).splitlines()[0] if str(e) else ""
    raise DatasetError(
        f"{name}: downloading {tfds_name} failed ({type(e).__name__}: {first}); "
        f"{_prepare_hint(tfds_name)}.") from None
  if failure is not None:
    _diagnose(tfds, name, tfds_name, data_dir)  # Outside `except`: no chained traceback.
    raise failure
  num_classes = int(train_src.dataset_info.features["label"].num_classes)
  tr_x, tr_y = _read_all(train_src)
  for src in extra_src:
    ex_x, ex_y = _read_all(src)
    tr_x, tr_y = np.concatenate([tr_x, ex_x]), np.concatenate([tr_y, ex_y])
  te_x, te_y = _read_all(test_src)
  return tr_x, tr_y, te_x, te_y, num_classes


def _diagnose(tfds, name: str, tfds_name: str, data_dir: str | None) -> None:
  """Raise a one-line DatasetError if the data is missing or not array_record; else return."""
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top

  root = data_dir or constants.get_default_data_dir()
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DatasetError(
        f"{name}: no prepared {tfds_name} data under {root}; {_prepare_hint(tfds_name)}.")
  formats = {f.value for f in builder.info.available_file_formats()}
  if "array_record" not in formats:
    raise DatasetError(
        f"{name}: {tfds_name} under {root} is prepared as {', '.join(sorted(formats)) or '?'}, "
        f"not array_record (needed to read without TensorFlow); convert it with `tfds "
        f"convert_format --dataset_dir={root}/{tfds_name} --out_file_format=array_record` "
        f"or re-prepare: {_prepare_hint(tfds_name)}.")


def _read_all(source) -> tuple[np.ndarray, np.ndarray]:
  """A whole tfds data source as (uint8 images [N, H, W, C], int32 labels [N]).

  Uses `__getitems__` (one batched array_record read per chunk, instead of one read per
  example); decoding each example (proto + PNG) stays per example inside tfds. Measured on
  50,000 32x32x3 records, 2 CPU cores: raw reads 0.4-0.7 s batched vs 6-8 s one by one;
  decoding ~4-5 s with PIL (threads did not help).
  """
  n = len(source)
  images = labels = None
  for start in range(0, n, _READ_CHUNK):
    stop = min(n, start + _READ_CHUNK)
    examples = source.__getitems__(list(range(start, stop)))
    if images is None:
      first = np.asarray(examples[0]["image"])
      images = np.empty((n,) + first.shape, np.uint8)
      labels = np.empty((n,), np.int32)
    images[start:stop] = np.stack([ex["image"] for ex in examples])
    labels[start:stop] = np.fromiter((ex["label"] for ex in examples), np.int64, stop - start)
  if images is None:
    raise DatasetError(f"{source!r} is empty; re-prepare the data set (BUILD.md).")
  return images, labels

"""Data sets for MetaQNN: whole splits as NumPy uint8 arrays, plus in-jit normalisation.

Every data set fits in host memory (the largest, SVHN's train split, is ~225 MB as uint8), so
`load` reads each split once into arrays and the trainer batches from them. The validation
split is carved from the training split, stratified and seeded (SPEC section 4), unless
the data brings its own (npz x_val/y_val, a folder's validation/ or val/, a tfds
validation split).

  digits   scikit-learn's 8x8 digits (offline; the embedded default).
  mnist, cifar10, cifar100, svhn (`svhn_cropped`): tensorflow-datasets, read through
           `tfds.data_source` from data prepared in array_record format (see BUILD.md,
           "Preparing data sets"); TensorFlow is not needed to read them.
  tfds:NAME    any tensorflow-datasets image classification set (image size, channels,
               classes and splits from the builder's info).
  npz:PATH     arrays x_train, y_train and optionally x_val, y_val, x_test, y_test (uint8
               HWC or grey HW).
  folder:PATH  image files, one subfolder per class (PATH/<class>/*), or tfds' ImageFolder
               layout (PATH/train/<class>/*, PATH/test/<class>/*, optionally
               PATH/validation/ or PATH/val/); read with PIL.

A missing test split is carved out of train (stratified, fixed seed). The image side,
channels and classes of `config.dataset` are checked against the data (0 = take them from
the data, see `resolve`); `config.dataset.resize=True` resizes every image to
`config.dataset.image_size` instead.

Nothing heavy happens at import time; tensorflow_datasets is imported only when a tfds data
set is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from typing import Any, Callable

import numpy as np
from metaqnn.errors import UserError

# The one registry of data sets known by name: image side, channels, classes, and the
# tensorflow-datasets builder that holds them (None: scikit-learn's digits). Any other
# data set is named by a source prefix (PREFIXES) and described by its data.
DATASETS = {
    "digits": dict(image_size=8, channels=1, num_classes=10, tfds=None),
    "mnist": dict(image_size=28, channels=1, num_classes=10, tfds="mnist"),
    "cifar10": dict(image_size=32, channels=3, num_classes=10, tfds="cifar10"),
    "cifar100": dict(image_size=32, channels=3, num_classes=100, tfds="cifar100"),
    "svhn": dict(image_size=32, channels=3, num_classes=10, tfds="svhn_cropped"),
}
KNOWN = tuple(DATASETS)
# The built-in sets' class names, in label order (tfds' svhn_cropped labels the digit 0
# as 0). CIFAR-100's fine labels are in alphabetical order; its tfds builder knows their
# names only once the data is prepared.
_DIGITS = tuple(str(k) for k in range(10))
_CIFAR100 = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach
    couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster
    house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
    motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
    pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
    streetcar sunflower sweet_pepper table tank telephone television tiger tractor train
    trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())
CLASS_NAMES = {"digits": _DIGITS, "mnist": _DIGITS, "svhn": _DIGITS,
               "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                           "horse", "ship", "truck"),
               "cifar100": _CIFAR100}
PREFIXES = ("tfds:", "npz:", "folder:")

# A data set without a test split (digits, or a custom one) has a stratified 20% held out
# with this fixed seed, so the test set is the same whatever config.seed is (results across
# seeds stay comparable).
TEST_FRACTION = 0.2
TEST_SEED = 20170101

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")

PREPROCESS = ("mean", "gcn")

# Stream tags for np.random.default_rng([seed, tag]): independent draws per purpose.
_VAL_TAG = 1
_SUBSET_TAG = 2


class DatasetError(UserError):
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
  for field in ("image_size", "channels", "num_classes"):
    if int(ds.get(field, 0)) < 0:
      raise DatasetError(f"config.dataset.{field}={ds.get(field)} must be >= 0 (0 takes it "
                         "from the data).")
  if bool(ds.get("resize", False)) and int(ds.get("image_size", 0)) < 1:
    # Before any source is read: a folder of mixed sizes would otherwise be refused for
    # want of the resize that is set.
    raise DatasetError("config.dataset.resize=True needs config.dataset.image_size > 0, "
                       "the side to resize every image to.")
  pp = ds.get("preprocess", "mean")
  if pp not in PREPROCESS:
    raise DatasetError(
        f"config.dataset.preprocess={pp!r} is unknown; use one of: {', '.join(PREPROCESS)}.")


def _split(config, name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
           test_y: np.ndarray, num_classes: int, val: _Val = None, *,
           final: bool) -> Dataset:
  """Carve validation (unless the data has its own, `val`) and the train_fraction subset
  out of the training split."""
  ds = config.dataset
  seed = int(config.seed)
  n = len(train_y)
  empty_x = np.zeros((0,) + train_x.shape[1:], np.uint8)
  empty_y = np.zeros((0,), np.int32)
  if final:
    # Final training: all of train (validation included); train_fraction is a search setting.
    if val is not None:
      train_x, train_y = np.concatenate([train_x, val[0]]), np.concatenate([train_y, val[1]])
    tr_x, tr_y, va_x, va_y = train_x, train_y, empty_x, empty_y
  else:
    if val is not None:  # the data's own validation split
      (va_x, va_y), rest = val, np.arange(n)
    else:
      val_idx, rest = _carve_val(ds, name, train_y, seed)
      va_x, va_y = train_x[val_idx], train_y[val_idx]
    tf_ = float(ds.get("train_fraction", 1.0))
    if tf_ < 1.0:
      n_keep = max(1, int(round(tf_ * len(rest))))
      keep, _ = stratified_split(train_y[rest], n_keep,
                                 np.random.default_rng([seed, _SUBSET_TAG]))
      rest = rest[keep]
    tr_x, tr_y = train_x[rest], train_y[rest]
  return Dataset(
      name=name,
      train_images=tr_x, train_labels=tr_y.astype(np.int32),
      val_images=va_x, val_labels=va_y.astype(np.int32),
      test_images=test_x, test_labels=test_y.astype(np.int32),
      num_classes=int(num_classes),
      preprocess=str(ds.get("preprocess", "mean")),
      mean=_channel_mean(tr_x))


def _channel_mean(images: np.ndarray) -> np.ndarray:
  """float32 [C]: the per-channel mean of uint8 images / 255 (what 'mean' subtracts)."""
  return (images.reshape(-1, images.shape[-1]).mean(axis=0, dtype=np.float64) / 255.0
          ).astype(np.float32)


def _carve_val(ds, name: str, train_y: np.ndarray, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """(validation indices, the rest): `val_size` examples (or `val_fraction`), stratified."""
  n = len(train_y)
  vf = float(ds.get("val_fraction", 0.0))
  n_val = int(round(vf * n)) if vf > 0 else int(ds.val_size)
  if not 1 <= n_val < n:
    what = f"val_fraction={vf}" if vf > 0 else f"val_size={ds.val_size}"
    raise DatasetError(
        f"config.dataset.{what} gives {n_val} validation examples but {name}'s training "
        f"split has {n}; choose a value that leaves both splits non-empty.")
  return stratified_split(train_y, n_val, np.random.default_rng([seed, _VAL_TAG]))


# ---------------------------------------------------------------------------------------------
# Sources: each returns (train x, train y, test x, test y, classes (0: from the labels),
# the data's own validation split (x, y) or None).

_Val = tuple[np.ndarray, np.ndarray] | None
_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, _Val]


def _digits() -> _Arrays:
  """scikit-learn digits as uint8 [N, 8, 8, 1] (0..16 rescaled to 0..255), fixed 20% test."""
  from sklearn.datasets import load_digits  # Ships with scikit-learn: no download.

  d = load_digits()
  x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  y = d.target.astype(np.int32)
  return (*_carve_test(x, y), 10, None)


def _carve_test(x: np.ndarray, y: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train x, train y, test x, test y): a stratified TEST_FRACTION held out, fixed seed."""
  test_idx, train_idx = stratified_split(
      y, int(round(TEST_FRACTION * len(y))), np.random.default_rng(TEST_SEED))
  return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def source_of(name: str) -> tuple[str, str]:
  """(kind, argument) of a data set name: ("digits", ""), ("tfds", builder), ("npz", path)
  or ("folder", path); a one-line DatasetError for anything else."""
  if name in DATASETS:
    tfds_name = DATASETS[name]["tfds"]
    return ("tfds", tfds_name) if tfds_name else ("digits", "")
  for prefix in PREFIXES:
    if name.startswith(prefix) and name[len(prefix):]:
      return prefix[:-1], name[len(prefix):]
  raise DatasetError(
      f"unknown data set {name!r} (config.dataset.name); known: {', '.join(KNOWN)}, or "
      "tfds:NAME, npz:PATH, folder:PATH for your own (see configs/custom.py).")


def digest(data: Dataset) -> dict:
  """The sizes of a data set's splits and a hash of all its arrays: what a resumed
  search checks its data against (images added to a folder between runs, say)."""
  import hashlib
  h = hashlib.blake2b(digest_size=16)
  for a in (data.train_images, data.train_labels, data.val_images, data.val_labels,
            data.test_images, data.test_labels):
    h.update(repr((a.shape, str(a.dtype))).encode())
    h.update(np.ascontiguousarray(a))  # the buffer itself: no copy of a large split
  return {"train": len(data.train_labels), "val": len(data.val_labels),
          "test": len(data.test_labels), "hash": h.hexdigest()}


def absolute(config) -> None:
  """Makes an npz:/folder: path and a local tfds data_dir absolute in `config.dataset`,
  so that a record made with relative ones resumes and finalizes from any directory."""
  ds = config.dataset
  local = lambda path: os.path.abspath(os.path.expanduser(path))
  for prefix in ("npz:", "folder:"):
    if ds.name.startswith(prefix) and ds.name[len(prefix):]:
      ds.name = prefix + local(ds.name[len(prefix):])
  if ds.get("data_dir") and "://" not in str(ds.data_dir):  # gs:// and the like stay
    ds.data_dir = local(str(ds.data_dir))


def load(config, final: bool = False) -> Dataset:
  """The data set named by `config.dataset.name`, split for the search (or final training).

  final=False: train (optionally a stratified `train_fraction` subset), validation, and
  test. Validation is the data's own validation split where it has one (tfds'
  "validation", a folder's validation/ or val/, an npz's x_val and y_val), else a
  stratified seeded `val_size` examples (or `val_fraction`) carved out of train.
  final=True: train = the whole training split (validation included), val empty, test.
  Raises DatasetError (one line) for unknown names, bad split settings, missing data, or
  data that does not match `config.dataset` (see `_conform`).
  """
  _check_config(config.dataset)
  return _split(config, config.dataset.name, *_read(config, final), final=final)


def check(data: Any) -> None:
  """Refuses, in one line (DatasetError), a data set given in memory (`run_search(
  dataset=...)`) that a data set read from a config could not be: uint8 [N, H, W, C]
  square images alike in every split, integer labels in 0..num_classes-1 with every class
  in train and two in validation, a known normalisation and a mean per channel."""
  if not isinstance(data, Dataset):
    raise DatasetError(f"dataset= takes an input_pipeline.Dataset, not a "
                       f"{type(data).__name__}")
  label = f"the data set given in memory ({data.name!r})"
  splits = []
  for what, x, y in (("training", data.train_images, data.train_labels),
                     ("validation", data.val_images, data.val_labels),
                     ("test", data.test_images, data.test_labels)):
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4
            and 0 not in x.shape[1:]):
      raise DatasetError(
          f"{label}: {what} images must be a uint8 array [N, H, W, C] with H, W and C at "
          f"least 1 (0..255: they are normalised inside the step), got "
          f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not (isinstance(y, np.ndarray) and y.ndim == 1 and len(y) == len(x)
            and np.issubdtype(y.dtype, np.integer)):
      raise DatasetError(f"{label}: {what} labels must be {len(x)} integers (shape "
                         f"[{len(x)}]), one per image, got "
                         f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}")
    splits.append((x, y))
  (tr_x, tr_y), val, (te_x, te_y) = splits
  if not len(tr_y) or not len(val[1]):
    raise DatasetError(f"{label} has no {'training' if not len(tr_y) else 'validation'} "
                       "examples")
  k = data.num_classes
  if not (isinstance(k, (int, np.integer)) and k >= 2):
    raise DatasetError(f"{label}: num_classes={k!r} must be an integer >= 2")
  _conform(label, {}, tr_x, tr_y, te_x, te_y, int(k), val)
  if data.preprocess not in PREPROCESS:
    raise DatasetError(f"{label}: unknown preprocess {data.preprocess!r}; known: "
                       f"{', '.join(PREPROCESS)}")
  mean = np.asarray(data.mean)
  if mean.shape != (tr_x.shape[3],) or not np.all(np.isfinite(mean)):
    raise DatasetError(f"{label}: mean must be {tr_x.shape[3]} finite numbers, one per "
                       f"channel (of train_images / 255), got shape {mean.shape}")


def final_split(data: Dataset) -> Dataset:
  """A search's split of `data` as the final stage trains on it (`load`'s final=True):
  train and validation together, normalised by their mean; test as it is."""
  x = np.concatenate([data.train_images, data.val_images])
  y = np.concatenate([data.train_labels, data.val_labels]).astype(np.int32)
  return dataclasses.replace(data, train_images=x, train_labels=y, val_images=x[:0],
                             val_labels=y[:0], mean=_channel_mean(x))


def load_both(config) -> tuple[Dataset, Dataset]:
  """The search's split and the final one (`load`'s final=False and True) from one read
  of the data (two with SVHN's `final_extra`)."""
  _check_config(config.dataset)
  raw = _read(config, final=False)
  extra = bool(config.dataset.get("final_extra", False))
  return (_split(config, config.dataset.name, *raw, final=False),
          _split(config, config.dataset.name, *(_read(config, True) if extra else raw),
                 final=True))


def _read(config, final: bool) -> tuple:
  """The data's arrays, checked against `config.dataset`: train images and labels, test
  images and labels, the class count, and the data's own validation split (or None)."""
  ds = config.dataset
  name = ds.name
  kind, arg = source_of(name)
  if kind == "digits":
    tr_x, tr_y, te_x, te_y, k, val = _digits()
  elif kind == "tfds":
    # SVHN's final training also uses the 531,131 "extra" images (SPEC section 4).
    extra = final and bool(ds.get("final_extra", False))
    tr_x, tr_y, te_x, te_y, k, val = _tfds(name, arg, ds, extra)
  elif kind == "npz":  # ~ expanded here: the shell leaves it alone after "npz:"
    tr_x, tr_y, te_x, te_y, k, val = _npz(os.path.expanduser(arg))
  else:
    tr_x, tr_y, te_x, te_y, k, val = _folder(os.path.expanduser(arg), ds)
  return _conform(name, ds, tr_x, tr_y, te_x, te_y, k, val)


def resolve(config) -> Dataset | None:
  """Makes `config.dataset`'s image_size, channels and num_classes match the data.

  A built-in data set is checked against the registry (no data is read); any other is
  loaded, its zero (unset) fields are filled from the data and its set ones checked.
  Returns the loaded search split (None for built-ins), to be reused by the trainer.
  One-line DatasetError on a mismatch. Call before building the search space: its size
  bins follow the image side.
  """
  ds = config.dataset
  kind, _ = source_of(ds.name)
  if ds.name in DATASETS:
    known = DATASETS[ds.name]
    for field in ("image_size", "channels", "num_classes"):
      value = int(ds.get(field, 0))
      if field == "image_size" and bool(ds.get("resize", False)) and value > 0:
        continue
      if value == 0:
        ds[field] = known[field]
      elif value != known[field]:
        raise DatasetError(
            f"config.dataset.{field}={value} but {ds.name} has {field}={known[field]}; "
            f"remove the override{' or set --config.dataset.resize=True' * (field == 'image_size')}.")
    return None
  data = load(config)
  batch = int(config.get("train", {}).get("batch_size", 1))
  if len(data.train_labels) < batch:
    raise DatasetError(
        f"{ds.name} has {len(data.train_labels)} training examples after the validation "
        f"split, fewer than one batch (config.train.batch_size={batch}); lower the batch "
        "size or add data.")
  ds.image_size = int(data.train_images.shape[1])
  ds.channels = int(data.train_images.shape[3])
  ds.num_classes = int(data.num_classes)
  return data


def _conform(name: str, ds, tr_x, tr_y, te_x, te_y, k, val: _Val = None):
  """Checks (and resizes, if asked) images and labels against `config.dataset`; `val` is
  the data's own validation split, if any, checked like test.

  Images: uint8 [N, H, W, C] with H == W; `resize=True` resizes to `image_size` first.
  Labels: integers in 0..k-1 with every class in train and at least two classes; k is
  `num_classes` when set, else the data's. A set image_size, channels or num_classes must
  match the data.
  """
  resize = bool(ds.get("resize", False))
  side = int(ds.get("image_size", 0))
  va_x, va_y = val if val is not None else (te_x[:0], te_y[:0])
  for what, x in (("training", tr_x), ("validation", va_x), ("test", te_x)):
    if (x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[2] == x.shape[3]
        and x.shape[1] != x.shape[2]):  # [N, C, S, S]
      raise DatasetError(
          f"{name}: {what} images are {'x'.join(map(str, x.shape[1:]))}: channels first; "
          "store them channels last, [N, H, W, C] (x.transpose(0, 2, 3, 1)).")
    if resize and x.ndim == 4 and x.shape[3] not in (1, 3, 4):
      raise DatasetError(f"{name}: {what} images have {x.shape[3]} channels; resizing "
                         "handles 1 (grey), 3 (RGB) or 4 (RGBA).")
  if resize:  # side > 0: see _check_config
    changed = [x for x in (tr_x, va_x, te_x) if x.shape[1:3] != (side, side)]
    _check_fits_memory(name, sum(map(len, changed)), side, int(tr_x.shape[-1]))
    tr_x, va_x, te_x = (resize_all(x, side) for x in (tr_x, va_x, te_x))
  for what, x in (("training", tr_x), ("validation", va_x), ("test", te_x)):
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
      raise DatasetError(
          f"{name}: {what} images are {'x'.join(map(str, x.shape[1:]))}, not square; the "
          "search space needs square images: set --config.dataset.resize=True and "
          "--config.dataset.image_size=N.")
  for what, x in (("validation", va_x), ("test", te_x)):
    if x.shape[3] != tr_x.shape[3] and len(x):  # a resize keeps the channels
      raise DatasetError(f"{name}: {what} images have {x.shape[3]} channels but training "
                         f"images {tr_x.shape[3]}; give every split the same channels.")
    if x.shape[1:] != tr_x.shape[1:] and len(x):
      raise DatasetError(f"{name}: {what} images are {'x'.join(map(str, x.shape[1:]))} but "
                         f"training images {'x'.join(map(str, tr_x.shape[1:]))}; set "
                         "--config.dataset.resize=True and --config.dataset.image_size=N.")
  h, c = int(tr_x.shape[1]), int(tr_x.shape[3])
  if side and side != h:
    raise DatasetError(
        f"config.dataset.image_size={side} but {name}'s images are {h}x{h}; set "
        f"--config.dataset.image_size={h} (or 0 to take it from the data), or "
        "--config.dataset.resize=True to resize them.")
  want_c = int(ds.get("channels", 0))
  if want_c and want_c != c:
    raise DatasetError(f"config.dataset.channels={want_c} but {name}'s images have {c}; set "
                       f"--config.dataset.channels={c} (or 0 to take it from the data).")
  want_k = int(ds.get("num_classes", 0))
  if want_k and k and want_k != k:
    raise DatasetError(f"config.dataset.num_classes={want_k} but {name} has {k} classes; set "
                       f"--config.dataset.num_classes={k} (or 0 to take it from the data).")
  k = int(want_k or k or (int(tr_y.max()) + 1 if len(tr_y) else 0))
  for what, y in (("training", tr_y), ("validation", va_y), ("test", te_y)):
    if len(y) and (y.min() < 0 or y.max() >= k):
      raise DatasetError(f"{name}: {what} labels run from {int(y.min())} to {int(y.max())}; "
                         f"they must be class indices 0..{k - 1}.")
  present = np.unique(tr_y)
  if k < 2 or len(present) < 2:
    raise DatasetError(f"{name} has a single class; classification needs at least two.")
  if len(present) < k:
    missing = _first_missing(present, k)
    more = ", ..." if k - len(present) > len(missing) else ""
    which = (f"class {missing[0]} of 0..{k - 1} has" if len(missing) == 1 and not more
             else f"classes {', '.join(map(str, missing))}{more} of 0..{k - 1} have")
    raise DatasetError(f"{name}: {which} no training examples; labels must be 0..k-1 with "
                       "every class present.")
  if val is not None and len(va_y) and len(np.unique(va_y)) < 2:
    raise DatasetError(
        f"{name}: its validation split holds class {int(va_y[0])} only; the reward is a "
        "validation accuracy, which a constant guess would max out: add examples of the "
        "other classes there, or leave the split out to have one carved from train.")
  if val is not None:
    val = va_x, va_y.astype(np.int32)
  return tr_x, tr_y.astype(np.int32), te_x, te_y.astype(np.int32), k, val


def _first_missing(present: np.ndarray, k: int, n: int = 10) -> list[int]:
  """The first `n` of 0..k-1 absent from the sorted `present`, in O(len(present)): k is
  the largest label + 1, which may be huge (ids such as 10**9 for labels)."""
  missing, expect = [], 0
  for p in present.tolist() + [k]:
    missing.extend(range(expect, min(p, expect + n - len(missing))))
    if len(missing) >= n:
      break
    expect = p + 1
  return missing


def memory_bytes() -> int | None:
  """This machine's physical memory, where the OS tells it."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def _check_fits_memory(label: str, count: int, side: int, channels: int) -> None:
  """A one-line DatasetError where `count` uint8 images resized to side x side x channels
  would take more than half of this machine's memory: refused before they are made,
  rather than killed by the OS on the way."""
  need, total = count * side * side * channels, memory_bytes()
  if total and need > total // 2:
    raise DatasetError(
        f"{label}: {count:,} images resized to {side}x{side}x{channels} would take "
        f"{need / 2**30:,.1f} GiB, more than half of this machine's {total / 2**30:,.0f} GiB "
        "of memory; choose a smaller --config.dataset.image_size.")


def resize_all(x: np.ndarray, side: int) -> np.ndarray:
  """uint8 [N, H, W, C] resized to [N, side, side, C] (bilinear, PIL); unchanged if equal."""
  if x.ndim == 4 and x.shape[1] == x.shape[2] == side:
    return x
  return np.stack([_resize(img, side) for img in x]) if len(x) else np.zeros(
      (0, side, side, x.shape[-1]), np.uint8)


def _resize(img: np.ndarray, side: int) -> np.ndarray:
  from PIL import Image  # Pillow comes with matplotlib.

  grey = img.shape[-1] == 1
  out = Image.fromarray(img[..., 0] if grey else img).resize((side, side), Image.BILINEAR)
  out = np.asarray(out, np.uint8)
  return out[..., None] if grey else out


def _npz(path: str) -> _Arrays:
  """Arrays of a .npz file: x_train, y_train; optionally x_val, y_val and x_test, y_test."""
  label = f"npz:{path}"
  if os.path.isdir(path):
    raise DatasetError(f"{label} is a folder, not an .npz file (a folder of images is "
                       f"folder:{path}).")
  if not os.path.isfile(path):
    raise DatasetError(f"{label}: no such file (your data: --config.dataset.name=npz:PATH, "
                       "folder:PATH or tfds:NAME).")
  _, arrays = read_npz(path, label, "x_train=..., y_train=...")
  missing = [k for k in ("x_train", "y_train") if k not in arrays]
  if (missing or (("x_test" in arrays) != ("y_test" in arrays))
      or (("x_val" in arrays) != ("y_val" in arrays))):
    raise DatasetError(f"{label} holds {', '.join(sorted(arrays)) or 'nothing'}; it needs "
                       "x_train and y_train, and optionally x_val with y_val and x_test "
                       "with y_test.")
  def images(key):
    x = arrays[key]
    if x.dtype != np.uint8:
      raise DatasetError(f"{label}: {key} is {x.dtype}; images must be uint8 (0..255).")
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4 or 0 in x.shape[1:]:
      raise DatasetError(f"{label}: {key} has shape {x.shape}; expected [N, H, W, C] or "
                         "[N, H, W] (grey), with H, W and C at least 1.")
    return x
  def labels(key, n):
    y = arrays[key]
    if y.ndim == 2 and y.shape[1:] == (1,):  # [N, 1], as keras.datasets gives them
      y = y[:, 0]
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
      raise DatasetError(f"{label}: {key} must be {n} integer labels (shape [{n}]), got "
                         f"{y.dtype} {y.shape}.")
    return y.astype(np.int64)
  tr_x = images("x_train")
  tr_y = labels("y_train", len(tr_x))
  split = {}
  for name, carved in (("val", "a validation split carved out of x_train "
                        "(config.dataset.val_fraction)"),
                       ("test", "a test split carved out of x_train")):
    if f"x_{name}" in arrays:
      x = images(f"x_{name}")
      if not len(x):  # the search would validate, or the final stage test, on nothing
        raise DatasetError(f"{label}: x_{name} is empty; add examples, or leave x_{name} "
                           f"and y_{name} out to have {carved}.")
      split[name] = x, labels(f"y_{name}", len(x))
  if "test" in split:
    return tr_x, tr_y, *split["test"], 0, split.get("val")
  _check_labels_carvable(label, tr_y)
  return (*_carve_test(tr_x, tr_y), 0, split.get("val"))


def read_npz(path: str, label: str, keys: str,
             pick: Callable[[list[str]], list[str]] = lambda names: names
             ) -> tuple[list[str], dict[str, np.ndarray]]:
  """The names of an .npz file's arrays, and those of them that `pick` chooses, read;
  one-line DatasetErrors, prefixed `label`, for a file that is none (`keys`: what
  np.savez should be given, for the message)."""
  import zipfile
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # EOFError: empty file
    raise DatasetError(f"{label} is not a readable .npz file ({type(e).__name__}).") from None
  if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy: one bare array, no names
    raise DatasetError(f"{label} holds one array (a .npy file), not named arrays; save them "
                       f"with np.savez(PATH, {keys}).")
  try:
    with z:
      return list(z.files), {k: z[k] for k in pick(list(z.files))}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if "allow_pickle" in str(e):  # never unpickled: loading a pickle can run code
      raise DatasetError(f"{label} holds object arrays (pickled Python objects), which are "
                         "not read; save numeric arrays (uint8 images, integer labels).") \
          from None
    raise DatasetError(f"{label} is not a readable .npz file ({type(e).__name__}).") from None


def _check_labels_carvable(name: str, y: np.ndarray) -> None:
  """Labels must be valid class indices before a split is stratified on them."""
  if len(y) == 0:
    raise DatasetError(f"{name} has no training examples.")
  if y.min() < 0:
    raise DatasetError(f"{name}: training labels run from {int(y.min())} to {int(y.max())}; "
                       "they must be class indices 0..k-1.")


def _folder(path: str, ds) -> _Arrays:
  """Image files in PATH/<class>/ (test carved out of them), or in tfds' ImageFolder
  layout PATH/train/<class>/ with optional PATH/validation/<class>/ (or val/) and
  PATH/test/<class>/. Classes: train's folder names sorted as strings (as tfds'
  ImageFolder and torchvision do; "10" comes before "2").

  Not tfds' ImageFolder builder: it reads through tf.data and needs TensorFlow.
  """
  label = f"folder:{path}"
  if not os.path.isdir(path):
    what = "is a file, not a folder" if os.path.exists(path) else "no such directory"
    raise DatasetError(f"{label}: {what}.")
  if int(ds.get("channels", 0)) not in (0, 1, 3):
    raise DatasetError(f"{label}: config.dataset.channels={ds.channels}, but image files are "
                       "read as grey (1) or RGB (3); set 1, 3, or 0 to take it from the data.")
  subdirs = _subdirs(path)
  split_layout = _split_layout(subdirs)
  classes = _subdirs(os.path.join(path, "train")) if split_layout else subdirs
  roots = [os.path.join(path, d) for d in subdirs] if split_layout else [path]
  _check_folder_fits(label, [os.path.join(r, c) for r in roots for c in classes], ds)
  if not split_layout:
    tr_x, tr_y = _read_folder(label, path, classes, ds)
    return (*_carve_test(tr_x, tr_y), len(classes), None)
  if {"validation", "val"} <= set(subdirs):
    raise DatasetError(f"{label} has both validation/ and val/; keep one.")
  tr_x, tr_y = _read_folder(label, os.path.join(path, "train"), classes, ds)
  split = {}
  for name in [d for d in subdirs if d != "train"]:
    extra = sorted(set(_subdirs(os.path.join(path, name))) - set(classes))
    if extra:
      alike = [e for e in extra if unicode_form(e) in map(unicode_form, classes)]
      raise DatasetError(
          f"{label}: {name}/ has classes {', '.join(extra)} that train/ lacks" + (
              f" (the folder {alike[0]!r} has a name that train/ spells with other Unicode "
              "characters, as macOS and zip files write accents: rename one of them)"
              if alike else "") + ".")
    x, y = _read_folder(label, os.path.join(path, name), classes, ds, required=False)
    if not len(y):  # the search would validate, or the final stage test, on nothing
      raise DatasetError(f"{label}: {name}/ holds no images; add some, or remove {name}/ to "
                         f"have a {_SPLIT_FOLDERS[name]} split carved out of train/.")
    split[_SPLIT_FOLDERS[name]] = x, y
  val = split.get("validation")
  if "test" in split:
    return tr_x, tr_y, *split["test"], len(classes), val
  return (*_carve_test(tr_x, tr_y), len(classes), val)


def _image_files(folder: str) -> list[str]:
  """The image files directly in `folder` (none if it is missing), sorted."""
  if not os.path.isdir(folder):
    return []
  return sorted(f for f in os.listdir(folder)
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(folder, f)))


def _check_folder_fits(label: str, folders: list[str], ds) -> None:
  """`_check_fits_memory` for the images of `folders` resized, before any is read (the
  channels: the config's, else the first image's, as `_read_folder` reads it)."""
  side = int(ds.get("image_size", 0))
  if not (bool(ds.get("resize", False)) and side > 0):
    return
  files = [os.path.join(d, f) for d in folders for f in _image_files(d)]
  if files:
    channels = int(ds.get("channels", 0)) or read_image(files[0], None, label).shape[-1]
    _check_fits_memory(label, len(files), side, channels)


# A folder's split subfolders and the splits they hold.
_SPLIT_FOLDERS = {"train": "train", "validation": "validation", "val": "validation",
                  "test": "test"}


def _split_layout(subdirs: list[str]) -> bool:
  """Whether a folder's subfolders are splits (train/, test/...), not classes."""
  return bool(subdirs) and set(subdirs) <= set(_SPLIT_FOLDERS) and "train" in subdirs


def class_names(config) -> list[str] | None:
  """The names of the data's classes, in label order, where they are known: a folder's
  class folders (as `load` orders them), a built-in set's (`CLASS_NAMES`), a tfds set's
  (its builder's info). None for arrays."""
  kind, arg = source_of(config.dataset.name)
  if config.dataset.name in CLASS_NAMES:
    return list(CLASS_NAMES[config.dataset.name])
  if kind == "tfds":
    return _tfds_class_names(arg, config.dataset.get("data_dir") or None)
  if kind != "folder":
    return None
  path = os.path.expanduser(arg)
  subdirs = _subdirs(path)
  return _subdirs(os.path.join(path, "train")) if _split_layout(subdirs) else subdirs


def unicode_form(name: str) -> str:
  """A folder's name in one Unicode form (NFC): macOS and zip files write "café"
  decomposed, e and a combining accent, where Linux keeps the name as it was given."""
  return unicodedata.normalize("NFC", name)


def _subdirs(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path)
                if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))


def _read_folder(label: str, root: str, classes: list[str], ds, required: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Every image under root/<class>/ as uint8 [N, H, W, C] and labels (class index)."""
  if len(classes) < 2:
    raise DatasetError(f"{label}: {root} has {len(classes)} class folder(s); one subfolder "
                       "per class is needed, at least two.")
  channels = int(ds.get("channels", 0))
  resize = bool(ds.get("resize", False))
  side = int(ds.get("image_size", 0))
  images, labels, first = [], [], {}
  for k, cls in enumerate(classes):
    folder = os.path.join(root, cls)
    files = _image_files(folder)
    if not files and required:
      raise DatasetError(_no_images(label, folder))
    if files:
      _check_not_nested(label, folder)
    for f in files:
      file = os.path.join(folder, f)
      arr = read_image(file, {1: "L", 3: "RGB"}.get(channels), label)
      if resize and side > 0:
        arr = _resize(arr, side)
      first.setdefault(arr.shape, file)
      images.append(arr)
      labels.append(k)
  if len(first) > 1:
    (s1, f1), (s2, f2) = list(first.items())[:2]
    if s1[-1] != s2[-1]:
      raise DatasetError(f"{label}: {f1} has {s1[-1]} channel(s) but {f2} {s2[-1]}; set "
                         "--config.dataset.channels=1 or 3 to convert them all.")
    raise DatasetError(
        f"{label}: images of different sizes ({f1} is {s1[0]}x{s1[1]}, {f2} is "
        f"{s2[0]}x{s2[1]}); set --config.dataset.resize=True and "
        "--config.dataset.image_size=N to resize them all to NxN.")
  if not images:
    c = channels or 3
    return np.zeros((0, side or 1, side or 1, c), np.uint8), np.zeros((0,), np.int64)
  return np.stack(images), np.asarray(labels, np.int64)


def read_image(file: str, mode: str | None, label: str) -> np.ndarray:
  """One image file as uint8 [H, W, C], in PIL `mode` ("L", "RGB", "RGBA"; None: grey
  images grey, the others RGB), alpha dropped otherwise; a one-line DatasetError,
  prefixed `label`, if it cannot be read."""
  import warnings
  from PIL import Image, UnidentifiedImageError
  try:
    with warnings.catch_warnings():
      # A large image is read (PIL warns from MAX_IMAGE_PIXELS, as it opens or loads it)
      # up to twice that, where it is refused below.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(file) as im:
        im = eight_bit(im, f"{label}: {file}")
        if im.mode == "P" and "transparency" in im.info:  # through RGBA, as PIL asks
          im = im.convert("RGBA")
        # Grey with alpha (LA) is grey too: the alpha is dropped, as RGBA's.
        mode = mode or ("L" if im.mode in ("1", "L", "LA", "La") else "RGB")
        arr = np.asarray(im.convert(mode), np.uint8)
  except DatasetError:  # eight_bit's own (a ValueError too): as it says
    raise
  except Image.DecompressionBombError:  # PIL refuses images of over 2 x MAX_IMAGE_PIXELS
    raise DatasetError(f"{label}: the image {file} has more pixels than PIL reads safely "
                       f"({2 * Image.MAX_IMAGE_PIXELS:,}); shrink it or leave it out.") from None
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise DatasetError(f"{label}: cannot read the image {file} ({type(e).__name__}).") \
        from None
  return arr[..., None] if arr.ndim == 2 else arr


def eight_bit(im, where: str):
  """A PIL image of more than 8 bits per pixel (modes I;16*, I, F) as 8-bit grey, else `im`.

  PIL's own convert clips such pixels at 255, so a 16-bit image came out white. 16-bit
  pixels are scaled to 8 bits (x / 257, as 65535 -> 255). Mode I is how some Pillow
  versions open 16-bit PNGs (PNG has no 32-bit depth): such PNGs are scaled like 16-bit
  ones, whatever their values. Other mode-I files (32-bit TIFFs) are kept if in 0..255,
  scaled if in 0..65535, and refused beyond; floating-point ones (no known range) are
  refused.
  """
  from PIL import Image

  if im.mode == "F":
    raise DatasetError(f"{where} is a floating-point image; save the images with 8 or 16 "
                       "bits per channel.")
  if im.mode.startswith("I;16"):
    x = np.asarray(im).astype(np.float64) / 257.0
  elif im.mode == "I":
    x = np.asarray(im).astype(np.float64)
    if x.size and (x.min() < 0 or x.max() > 65535):
      raise DatasetError(f"{where} is a 32-bit image with pixels outside 0..65535; save the "
                         "images with 8 or 16 bits per channel.")
    if im.format == "PNG" or (x.size and x.max() > 255):
      x = x / 257.0
  else:
    return im
  return Image.fromarray(np.rint(x).astype(np.uint8))


def _check_not_nested(label: str, folder: str) -> None:
  """Refuses a class folder that holds images in subfolders too: they would be left out
  of training without a word (and `predict` on the folder would read them)."""
  for root, dirs, names in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    if root != folder and any(not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                              for f in names):
      raise DatasetError(f"{label}: class folder {folder} also holds images in its subfolder "
                         f"{os.path.relpath(root, folder)}, which are not read; move them "
                         "into the class folder itself, or out of the data.")


def _no_images(label: str, folder: str) -> str:
  """Why a class folder holds no images; a folder of folders is a layout mistake (images
  one level too deep, or split folders other than train/, validation/, val/ and test/), and
  is named so."""
  inner = _subdirs(folder)
  if not inner:
    return f"{label}: class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
  return (f"{label}: class folder {folder} holds folders ({', '.join(inner[:5])}), not "
          "images; the layouts are PATH/<class>/<image> and PATH/train/<class>/<image> "
          "with optional PATH/validation/<class>/<image> (or val/) and "
          "PATH/test/<class>/<image>.")


# Records read per `__getitems__` call: batched reads from array_record, bounded memory.
_READ_CHUNK = 4096


def _prepare_hint(tfds_name: str) -> str:
  """The one command that prepares `tfds_name` readably for `load`, and where it is explained."""
  return (f"on a machine with network run `pip install tensorflow && tfds build {tfds_name} "
          f"--file_format=array_record --data_dir=DIR`, copy DIR here and pass "
          f"--config.dataset.data_dir=DIR (BUILD.md, \"Preparing data sets\")")


def _tfds(name: str, tfds_name: str, ds, extra: bool = False) -> _Arrays:
  """train (plus "extra" if asked), validation and test splits of a tensorflow-datasets
  set, read without TensorFlow; without a test split, test is carved out of train
  (without a validation split, `_split` carves one)."""
  try:
    import tensorflow_datasets as tfds  # Lazy: digits users never pay for it.
  except ImportError as e:
    raise DatasetError(
        f"{name} needs tensorflow-datasets ({e}); run `pip install -r requirements.txt`.") from None
  data_dir = ds.data_dir or None
  download = bool(ds.download)
  splits = tfds_splits(tfds, name, tfds_name, data_dir) or ["test"]
  has_test, has_val = "test" in splits, "validation" in splits
  failure = None
  try:
    # file_format is passed explicitly: tfds.data_source only defaults to array_record when no
    # data_dir is given, and download=True would otherwise prepare unreadable TFRecords.
    train_src, *rest = tfds.data_source(
        tfds_name, split=(["train"] + ["test"] * has_test + ["validation"] * has_val
                          + (["extra"] if extra else [])),
        data_dir=data_dir,
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
  features = train_src.dataset_info.features
  if "image" not in features or "label" not in features:
    raise DatasetError(f"{name} is not an image classification data set (its features are "
                       f"{', '.join(features.keys())}; an image and a label are needed).")
  num_classes = int(features["label"].num_classes)
  side = int(ds.get("image_size", 0)) if bool(ds.get("resize", False)) else 0
  if side:  # all splits, before any is read (channels: the image feature's, else RGB)
    shape = getattr(features["image"], "shape", None) or (None, None, 3)
    _check_fits_memory(name, len(train_src) + sum(map(len, rest)), side,
                      int(shape[-1] or 3))
  test_src = rest.pop(0) if has_test else None
  val = _read_all(rest.pop(0), name, side) if has_val else None
  tr_x, tr_y = _read_all(train_src, name, side)
  for src in rest:  # "extra"
    ex_x, ex_y = _read_all(src, name, side)
    tr_x, tr_y = np.concatenate([tr_x, ex_x]), np.concatenate([tr_y, ex_y])
  if test_src is None:
    _check_labels_carvable(name, tr_y)
    return (*_carve_test(tr_x, tr_y), num_classes, val)
  te_x, te_y = _read_all(test_src, name, side)
  return tr_x, tr_y, te_x, te_y, num_classes, val


def _tfds_class_names(tfds_name: str, data_dir: str | None) -> list[str] | None:
  """A tfds set's label names from its builder's info (no data read); None where it has
  none to give. Names only label predictions: nothing fails for want of them."""
  try:
    import tensorflow_datasets as tfds
    names = tfds.builder(tfds_name, data_dir=data_dir).info.features["label"].names
  except Exception:  # pylint: disable=broad-except
    return None
  return [str(n) for n in names] or None


def tfds_splits(tfds, name: str, tfds_name: str, data_dir: str | None) -> list[str]:
  """The split names in the builder's info ([] when tfds does not know them yet); a
  one-line DatasetError if tfds has no data set of that name."""
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__name__ != "DatasetNotFoundError":
      raise
    raise DatasetError(f"{name}: tensorflow-datasets has no data set {tfds_name!r} "
                       "(see https://www.tensorflow.org/datasets/catalog).") from None
  return list(builder.info.splits.keys())


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


def _read_all(source, name: str = "", side: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A whole tfds data source as (uint8 images [N, H, W, C], int32 labels [N]); with
  `side` > 0 each image is resized to side x side as it is read.

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
    batch = [np.asarray(ex["image"]) for ex in examples]
    if side:
      batch = [_resize(x if x.ndim == 3 else x[..., None], side) for x in batch]
    if images is None:
      images = np.empty((n,) + batch[0].shape, np.uint8)
      labels = np.empty((n,), np.int32)
    odd = next((x.shape for x in batch if x.shape != images.shape[1:]), None)
    if odd is not None:
      raise DatasetError(
          f"{name}: images of different sizes ({'x'.join(map(str, images.shape[1:]))} and "
          f"{'x'.join(map(str, odd))}); set --config.dataset.resize=True and "
          "--config.dataset.image_size=N to resize them all to NxN.")
    images[start:stop] = np.stack(batch)
    labels[start:stop] = np.fromiter((ex["label"] for ex in examples), np.int64, stop - start)
  if images is None:
    raise DatasetError(f"{source!r} is empty; re-prepare the data set (BUILD.md).")
  return images, labels

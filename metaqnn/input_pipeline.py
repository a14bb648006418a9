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

`sources` reads each kind into arrays; this module checks them and splits them. A
missing test split is carved out of train (stratified, fixed seed). The image side,
channels and classes of `config.dataset` are checked against the data (0 = take them from
the data, see `resolve`); `config.dataset.resize=True` resizes every image to
`config.dataset.image_size` instead.

Nothing heavy happens at import time; tensorflow_datasets is imported only when a tfds data
set is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import ml_collections
import numpy as np

from metaqnn import sources
from metaqnn.errors import UserError
from metaqnn.sources import DatasetError  # re-exported: the data's one error type

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

PREPROCESS = ("mean", "gcn")

# Stream tags for np.random.default_rng([seed, tag]): independent draws per purpose.
_VAL_TAG = 1
_SUBSET_TAG = 2


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
           test_y: np.ndarray, num_classes: int, val: sources.Val = None, *,
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


def folder_holding(config, path: str) -> str | None:
  """The data folder of a folder: data set that `path` lies in (a work or output
  directory there would be read as a class of images once made), else None."""
  name = str(config.dataset.name)
  if not name.startswith("folder:"):
    return None
  data, inner = (os.path.realpath(os.path.expanduser(p))
                 for p in (name[len("folder:"):], path))
  return data if os.path.commonpath([data, inner]) == data else None


def load(config: ml_collections.ConfigDict, final: bool = False) -> Dataset:
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


def load_both(config: ml_collections.ConfigDict) -> tuple[Dataset, Dataset]:
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
    tr_x, tr_y, te_x, te_y, k, val = sources.digits()
  elif kind == "tfds":
    # SVHN's final training also uses the 531,131 "extra" images (SPEC section 4).
    extra = final and bool(ds.get("final_extra", False))
    tr_x, tr_y, te_x, te_y, k, val = sources.from_tfds(name, arg, ds, extra)
  elif kind == "npz":  # ~ expanded here: the shell leaves it alone after "npz:"
    tr_x, tr_y, te_x, te_y, k, val = sources.from_npz(os.path.expanduser(arg))
  else:
    tr_x, tr_y, te_x, te_y, k, val = sources.from_folder(os.path.expanduser(arg), ds)
  if te_x is None:  # no test split of its own: a fixed one is carved out of train
    _check_labels_carvable(name, tr_y)
    tr_x, tr_y, te_x, te_y = _carve_test(tr_x, tr_y)
  return _conform(name, ds, tr_x, tr_y, te_x, te_y, k, val)


def resolve(config: ml_collections.ConfigDict) -> Dataset | None:
  """Makes `config.dataset`'s image_size, channels and num_classes match the data.

  A built-in data set is checked against the registry (no data is read); any other is
  loaded, its zero (unset) fields are filled from the data and its set ones checked.
  Returns the loaded search split (None for built-ins), to be reused by the trainer.
  One-line DatasetError on a mismatch. Call before building the search space: its size
  bins follow the image side.
  """
  ds = config.dataset
  source_of(ds.name)  # (an unknown name refused here, in one line)
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
        f"{ds.name} has {len(data.train_labels)} examples left to train on, fewer than "
        f"one batch (config.train.batch_size={batch}); lower the batch "
        "size or add data.")
  ds.image_size = int(data.train_images.shape[1])
  ds.channels = int(data.train_images.shape[3])
  ds.num_classes = int(data.num_classes)
  return data


def _conform(name: str, ds, tr_x, tr_y, te_x, te_y, k, val: sources.Val = None):
  """Checks (and resizes, if asked) images and labels against `config.dataset`; `val` is
  the data's own validation split, if any, checked like test.

  Images: uint8 [N, H, W, C] with H == W; `resize=True` resizes to `image_size` first.
  Labels: integers in 0..k-1 with every class in train and at least two classes; k is
  `num_classes` when set, else the data's. A set image_size, channels or num_classes must
  match the data.
  """
  va_x, va_y = val if val is not None else (te_x[:0], te_y[:0])
  tr_x, va_x, te_x = _conform_images(name, ds, tr_x, va_x, te_x)
  k = _check_labels(name, ds, tr_y, va_y, te_y, k, own_val=val is not None)
  if val is not None:
    val = va_x, va_y.astype(np.int32)
  return tr_x, tr_y.astype(np.int32), te_x, te_y.astype(np.int32), k, val


def _conform_images(name: str, ds, tr_x, va_x, te_x):
  """The three splits' images, resized if `ds.resize`, checked: square, the same shape,
  and the config's image_size and channels where set."""
  resize = bool(ds.get("resize", False))
  side = int(ds.get("image_size", 0))
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
    sources.check_fits_memory(name, sum(map(len, changed)),
                              (side, side, int(tr_x.shape[-1])))
    tr_x, va_x, te_x = (sources.resize_all(x, side) for x in (tr_x, va_x, te_x))
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
  return tr_x, va_x, te_x


def _check_labels(name: str, ds, tr_y, va_y, te_y, k, own_val: bool) -> int:
  """The number of classes (the config's, else the data's `k`, else the largest label +
  1), with labels checked: in range, every class in train, two or more classes, and two
  or more in the data's own validation split."""
  want_k = int(ds.get("num_classes", 0))
  inferred = not (want_k or k)  # the largest label + 1: a stray label makes more classes
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
    stray = ""
    if inferred:
      top = int(present[-1])
      n = int(np.sum(tr_y == top))
      stray = (f" (k is the largest label + 1, and label {top} is in {n:,} training "
               f"example{'s' * (n != 1)}: a stray label? else set "
               "--config.dataset.num_classes)")
    raise DatasetError(f"{name}: {which} no training examples{stray}; labels must be 0..k-1 "
                       "with every class present.")
  counts = np.bincount(tr_y.astype(np.int64), minlength=k)  # (NumPy < 2.2.4: no uint64)
  rare = np.flatnonzero(counts < min(5, 0.01 * len(tr_y) / k))
  if len(rare):  # a stray label, most likely: said, not refused (rare classes exist)
    _warn_once(f"warning: {name}: class{'es' * (len(rare) > 1)} "
               f"{', '.join(map(str, rare[:10]))}{', ...' * (len(rare) > 10)} of "
               f"0..{k - 1} {'have' if len(rare) > 1 else 'has'} under 1% of the mean "
               "number of training examples per class "
               f"({', '.join(str(int(counts[c])) for c in rare[:10])}); check those labels")
  if own_val and len(va_y) and len(np.unique(va_y)) < 2:
    raise DatasetError(
        f"{name}: its validation split holds class {int(va_y[0])} only; the reward is a "
        "validation accuracy, which a constant guess would max out: add examples of the "
        "other classes there, or leave the split out to have one carved from train.")
  return k


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
  """Says `line` on stderr once per process: the final stage loads the data again."""
  if line not in _WARNED:
    _WARNED.add(line)
    print(line, file=sys.stderr)


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


def _check_labels_carvable(name: str, y: np.ndarray) -> None:
  """Labels must be valid class indices before a split is stratified on them."""
  if len(y) == 0:
    raise DatasetError(f"{name} has no training examples.")
  if y.min() < 0:
    raise DatasetError(f"{name}: training labels run from {int(y.min())} to {int(y.max())}; "
                       "they must be class indices 0..k-1.")


def class_names(config) -> list[str] | None:
  """The names of the data's classes, in label order, where they are known: a folder's
  class folders (as `load` orders them), a built-in set's (`CLASS_NAMES`), a tfds set's
  (its builder's info). None for arrays."""
  kind, arg = source_of(config.dataset.name)
  if config.dataset.name in CLASS_NAMES:
    return list(CLASS_NAMES[config.dataset.name])
  if kind == "tfds":
    return sources.tfds_class_names(arg, config.dataset.get("data_dir") or None)
  return sources.folder_classes(os.path.expanduser(arg)) if kind == "folder" else None

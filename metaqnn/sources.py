"""Where a data set's images come from: scikit-learn's digits, tensorflow-datasets,
`.npz` files and folders of image files, each read into uint8 arrays [N, H, W, C] and
integer labels, as stored.

`input_pipeline` checks what these readers return against `config.dataset` and splits
it. Each reader returns `Arrays`: train images and labels, test images and labels (None
where the data has no test split: one is carved out of train), the class count (0: take
it from the labels) and the data's own validation split (images, labels) or None.
Every problem with the data is a one-line DatasetError.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import os
import sys
import unicodedata
from typing import Callable

import numpy as np
from metaqnn.errors import UserError


class DatasetError(UserError):
  """A user-facing data problem; str() is one line that says what to do."""


Val = tuple[np.ndarray, np.ndarray] | None
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, int, Val]


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif",
                    ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".heic", ".heif")
# Read where Pillow has a plugin for them; where it has none, a folder's are left out
# with one line that says so (`_read_folder`), not without a word.
_PLUGIN_EXTENSIONS = (".avif", ".heic", ".heif")


def _readable(name: str) -> bool:
  """Whether this Pillow opens files named so (it has the plugin their format needs)."""
  ext = os.path.splitext(name)[1].lower()
  if ext not in _PLUGIN_EXTENSIONS:
    return True
  from PIL import Image
  return ext in Image.registered_extensions()


def digits() -> Arrays:
  """scikit-learn digits as uint8 [N, 8, 8, 1] (0..16 rescaled to 0..255); no test split."""
  from sklearn.datasets import load_digits  # Ships with scikit-learn: no download.

  d = load_digits()
  x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  y = d.target.astype(np.int32)
  return x, y, None, None, 10, None


def from_npz(path: str) -> Arrays:
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
    if len(y) and int(y.max()) > np.iinfo(np.int64).max:  # (uint64) not wrapped round
      raise DatasetError(f"{label}: {key} runs up to {int(y.max())}; labels must be class "
                         "indices 0..k-1.")
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
  return tr_x, tr_y, None, None, 0, split.get("val")


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
  except MemoryError as e:  # np's own says how much it needed
    why = " ".join(str(e).split())[:120]
    raise DatasetError(f"{label} holds arrays larger than this machine's memory"
                       + (f" ({why})." if why else ".")) from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if "allow_pickle" in str(e):  # never unpickled: loading a pickle can run code
      raise DatasetError(f"{label} holds object arrays (pickled Python objects), which are "
                         "not read; save numeric arrays (uint8 images, integer labels).") \
          from None
    raise DatasetError(f"{label} is not a readable .npz file ({type(e).__name__}).") from None


def from_folder(path: str, ds) -> Arrays:
  """Image files in PATH/<class>/ (no test split), or in tfds' ImageFolder layout
  PATH/train/<class>/ with optional PATH/validation/<class>/ (or val/, valid/) and
  PATH/test/<class>/, split folders named in any case. Classes: train's folder names
  sorted as strings (as tfds' ImageFolder and torchvision do; "10" comes before "2").

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
  splits = _split_folders(subdirs)
  classes = _subdirs(os.path.join(path, splits["train"])) if splits else subdirs
  roots = [os.path.join(path, d) for d in subdirs] if splits else [path]
  for kind in sorted(set(map(_split_of, subdirs))) if splits else ():
    alike = [d + "/" for d in subdirs if _split_of(d) == kind]
    if len(alike) > 1:
      raise DatasetError(f"{label} has {' and '.join(alike)}, which are one split; keep one.")
  _check_folder_fits(label, [os.path.join(r, c) for r in roots for c in classes], ds)
  if not splits:
    tr_x, tr_y = _read_folder(label, path, classes, ds)
    return tr_x, tr_y, None, None, len(classes), None
  tr_x, tr_y = _read_folder(label, os.path.join(path, splits["train"]), classes, ds)
  split = {}
  for name in [d for d in subdirs if d != splits["train"]]:
    extra = sorted(set(_subdirs(os.path.join(path, name))) - set(classes))
    if extra:
      alike = [e for e in extra if unicode_form(e) in map(unicode_form, classes)]
      train = splits["train"]
      raise DatasetError(
          f"{label}: {name}/ has classes {', '.join(extra)} that {train}/ lacks" + (
              f" (the folder {alike[0]!r} has a name that {train}/ spells with other Unicode "
              "characters, as macOS and zip files write accents: rename one of them)"
              if alike else "") + ".")
    x, y = _read_folder(label, os.path.join(path, name), classes, ds, required=False)
    if not len(y):  # the search would validate, or the final stage test, on nothing
      raise DatasetError(f"{label}: {name}/ holds no images; add some, or remove {name}/ to "
                         f"have a {_split_of(name)} split carved out of {splits['train']}/.")
    split[_split_of(name)] = x, y
  val = split.get("validation")
  if "test" in split:
    return tr_x, tr_y, *split["test"], len(classes), val
  return tr_x, tr_y, None, None, len(classes), val


def _image_files(folder: str, label: str) -> list[str]:
  """The image files directly in `folder` (none if it is missing), sorted; a link to a
  missing file is an error (prefixed `label`), not an image left out without a word."""
  if not os.path.isdir(folder):
    return []
  names = sorted(f for f in os.listdir(folder)
                 if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                 and _readable(f))
  for f in names:
    path = os.path.join(folder, f)
    if os.path.islink(path) and not os.path.exists(path):
      raise DatasetError(f"{label}: the image {path} is a link to a missing file "
                         f"({os.readlink(path)}); restore it or remove the link.")
  return [f for f in names if os.path.isfile(os.path.join(folder, f))]


def _check_folder_fits(label: str, folders: list[str], ds) -> None:
  """`check_fits_memory` for the images of `folders`, before any is read: resized, or
  each the first one's size (the channels: the config's, else the first image's, as
  `_read_folder` reads it)."""
  files = [os.path.join(d, f) for d in folders for f in _image_files(d, label)]
  if not files:
    return
  side, channels = int(ds.get("image_size", 0)), int(ds.get("channels", 0))
  resize = bool(ds.get("resize", False)) and side > 0
  first = None if resize and channels else read_image(
      files[0], {1: "L", 3: "RGB"}.get(channels), label).shape
  shape = (side, side, channels or first[-1]) if resize else first
  check_fits_memory(label, len(files), shape, resized=resize)


# A folder's split subfolders (in any case: Train/ too) and the splits they hold.
_SPLIT_FOLDERS = {"train": "train", "validation": "validation", "val": "validation",
                  "valid": "validation", "test": "test"}


def _split_of(folder: str) -> str | None:
  return _SPLIT_FOLDERS.get(folder.lower())


def _split_folders(subdirs: list[str]) -> dict[str, str]:
  """{split: its folder} where a folder's subfolders are splits (train/, test/...), not
  classes; else {}."""
  if not subdirs or not all(map(_split_of, subdirs)):
    return {}
  splits = {_split_of(d): d for d in reversed(subdirs)}  # (two alike: refused by the reader)
  return splits if "train" in splits else {}


def folder_classes(path: str) -> list[str]:
  """A folder data set's class names, in label order (`from_folder`'s)."""
  subdirs = _subdirs(path)
  splits = _split_folders(subdirs)
  return _subdirs(os.path.join(path, splits["train"])) if splits else subdirs


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
    inner = os.path.join(root, classes[0]) if classes else ""
    deeper = inner and len(_subdirs(inner)) > 1 and not _image_files(inner, label)
    raise DatasetError(f"{label}: {root} has {len(classes)} class folder(s); one subfolder "
                       "per class is needed, at least two" + (
                           f" (if {inner} holds the class folders, give folder:{inner})"
                           if deeper else "") + ".")
  channels = int(ds.get("channels", 0))
  resize = bool(ds.get("resize", False))
  side = int(ds.get("image_size", 0))
  images, labels, first, unread = [], [], {}, collections.Counter()
  for k, cls in enumerate(classes):
    folder = os.path.join(root, cls)
    files = _image_files(folder, label)
    if os.path.isdir(folder):
      unread.update(os.path.splitext(f)[1].lower() for f in os.listdir(folder)
                    if f.lower().endswith(_PLUGIN_EXTENSIONS) and not _readable(f))
    if not files and required:
      raise DatasetError(_no_images(label, folder))
    if files:
      _check_not_nested(label, folder)
    for f in files:
      file = os.path.join(folder, f)
      arr = read_image(file, {1: "L", 3: "RGB"}.get(channels), label)
      if resize and side > 0:
        arr = _resize(arr, side)
      elif first and arr.shape not in first:  # said at once, not after reading them all
        raise _unlike(label, *next(iter(first.items())), arr.shape, file)
      elif arr.shape[0] != arr.shape[1]:
        raise DatasetError(
            f"{label}: {file} is {arr.shape[0]}x{arr.shape[1]}, not square; the search "
            "space needs square images: set --config.dataset.resize=True and "
            "--config.dataset.image_size=N.")
      first.setdefault(arr.shape, file)
      images.append(arr)
      labels.append(k)
  if len(first) > 1:  # resized, with channels taken from the data
    (s1, f1), (s2, f2) = list(first.items())[:2]
    raise _unlike(label, s1, f1, s2, f2)
  if unread:
    print(f"{label}: left out {sum(unread.values())} image(s) of {root} in formats this "
          f"Pillow has no plugin for ({', '.join(sorted(unread))}); convert them to PNG or "
          "JPEG to include them", file=sys.stderr)
  if not images:
    c = channels or 3
    return np.zeros((0, side or 1, side or 1, c), np.uint8), np.zeros((0,), np.int64)
  return np.stack(images), np.asarray(labels, np.int64)


def _unlike(label: str, s1: tuple, f1: str, s2: tuple, f2: str) -> DatasetError:
  """Two images of a folder, of other shapes, that one array cannot hold."""
  if s1[-1] != s2[-1]:
    return DatasetError(f"{label}: {f1} has {s1[-1]} channel(s) but {f2} {s2[-1]}; set "
                        "--config.dataset.channels=1 or 3 to convert them all.")
  return DatasetError(
      f"{label}: images of different sizes ({f1} is {s1[0]}x{s1[1]}, {f2} is "
      f"{s2[0]}x{s2[1]}); set --config.dataset.resize=True and "
      "--config.dataset.image_size=N to resize them all to NxN.")


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
      # Nor PIL's notes on a file it reads all the same (a TIFF tag past its end), which
      # would not name the file.
      warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
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
    ext = os.path.splitext(file)[1].lower()
    if isinstance(e, UnidentifiedImageError) and ext in _PLUGIN_EXTENSIONS:
      raise DatasetError(f"{label}: cannot read the image {file}: this Pillow has no plugin "
                         f"for {ext} files; convert them to PNG or JPEG.") from None
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
  one level too deep, or split folders other than train/, validation/, val/, valid/ and
  test/), and is named so."""
  inner = _subdirs(folder)
  if not inner:
    return f"{label}: class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
  return (f"{label}: class folder {folder} holds folders ({', '.join(inner[:5])}), not "
          "images; the layouts are PATH/<class>/<image> and PATH/train/<class>/<image> "
          "with optional PATH/validation/<class>/<image> (or val/, valid/) and "
          "PATH/test/<class>/<image>.")


# Records read per `__getitems__` call: batched reads from array_record, bounded memory.
_READ_CHUNK = 4096


def _prepare_hint(tfds_name: str) -> str:
  """The one command that prepares `tfds_name` for `from_tfds`, and where it is explained."""
  return (f"on a machine with network run `pip install tensorflow && tfds build {tfds_name} "
          f"--file_format=array_record --data_dir=DIR`, copy DIR here and pass "
          f"--config.dataset.data_dir=DIR (BUILD.md, \"Preparing data sets\")")


def from_tfds(name: str, tfds_name: str, ds, extra: bool = False) -> Arrays:
  """train (plus "extra" if asked), validation and test splits of a tensorflow-datasets
  set, read without TensorFlow; test and validation are None where the set has none."""
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
  features = train_src.dataset_info.features  # an image and a label: see tfds_splits
  num_classes = int(features["label"].num_classes)
  side = int(ds.get("image_size", 0)) if bool(ds.get("resize", False)) else 0
  if side:  # all splits, before any is read (channels: the image feature's, else RGB)
    shape = getattr(features["image"], "shape", None) or (None, None, 3)
    check_fits_memory(name, len(train_src) + sum(map(len, rest)),
                      (side, side, int(shape[-1] or 3)))
  test_src = rest.pop(0) if has_test else None
  val = _read_all(rest.pop(0), name, side) if has_val else None
  tr_x, tr_y = _read_all(train_src, name, side)
  for src in rest:  # "extra"
    ex_x, ex_y = _read_all(src, name, side)
    tr_x, tr_y = np.concatenate([tr_x, ex_x]), np.concatenate([tr_y, ex_y])
  if test_src is None:
    return tr_x, tr_y, None, None, num_classes, val
  te_x, te_y = _read_all(test_src, name, side)
  return tr_x, tr_y, te_x, te_y, num_classes, val


def tfds_class_names(tfds_name: str, data_dir: str | None) -> list[str] | None:
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
  one-line DatasetError if tfds has no data set of that name, config or version, or if
  its features are not an image and a class label (read from the builder's info, which
  needs no data: a text set is refused before anyone is told to prepare it)."""
  try:
    # (a builder whose code imports TensorFlow prints a banner on stdout: not ours to show)
    with contextlib.redirect_stdout(io.StringIO()):
      builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__name__ == "DatasetNotFoundError":
      raise DatasetError(f"{name}: tensorflow-datasets has no data set {tfds_name!r} "
                         "(see https://www.tensorflow.org/datasets/catalog).") from None
    # A config or version it lacks (ValueError, AssertionError), a name it cannot parse
    # (ValueError), a builder whose own code needs TensorFlow (ImportError).
    if not isinstance(e, (ValueError, AssertionError, ImportError, KeyError)):
      raise
    # tfds' first line: 'Failed to construct dataset "x", builder_kwargs "{...}": why.'
    why = (str(e).splitlines() or [""])[0].split('}": ', 1)[-1].split(" Here are ")[0]
    raise DatasetError(f"{name}: tensorflow-datasets cannot open {tfds_name!r} "
                       f"({type(e).__name__}: {why[:300].rstrip('.')}).") from None
  features = builder.info.features
  names = list(features.keys()) if hasattr(features, "keys") else []
  if not ("image" in names and "label" in names
          and hasattr(features["label"], "num_classes")):
    raise DatasetError(f"{name} is not an image classification data set (its features are "
                       f"{', '.join(names) or '?'}; an image and a class label are "
                       "needed).")
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


def memory_bytes() -> int | None:
  """This machine's physical memory, where the OS tells it."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def check_fits_memory(label: str, count: int, shape: tuple[int, int, int],
                      resized: bool = True) -> None:
  """A one-line DatasetError where `count` uint8 images of `shape` (H, W, C: resized to
  it, or as the first one read) would take more than half of this machine's memory:
  refused before they are made, rather than killed by the OS on the way."""
  need, total = count * math.prod(shape), memory_bytes()
  if total and need > total // 2:
    size = "x".join(map(str, shape))
    raise DatasetError(
        f"{label}: {count:,} images {'resized to' if resized else 'of'} {size}"
        f"{'' if resized else ' (the first one read)'} would take {need / 2**30:,.1f} GiB, "
        f"more than half of this machine's {total / 2**30:,.0f} GiB of memory; "
        + ("choose a smaller --config.dataset.image_size." if resized else
           "set --config.dataset.resize=True and a smaller --config.dataset.image_size."))


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

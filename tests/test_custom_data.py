"""Your own data: tfds:NAME, npz:PATH, folder:PATH; checks against the config; searches."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from metaqnn import config_lib
from metaqnn import input_pipeline as ip
from metaqnn import sources
from metaqnn import search
from metaqnn import search_space
from metaqnn import store as store_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n, side, channels=None, seed=0, k=3):
  """Class-dependent tiny images (class c is brighter in row band c), labels 0..k-1."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % k
  shape = (n, side, side) + ((channels,) if channels else ())
  x = rng.integers(0, 60, shape)
  for c in range(k):
    band = slice(c * side // k, (c + 1) * side // k)
    x[y == c, band] += 150
  return x.astype(np.uint8), y


def _npz(path, n=60, side=8, channels=None, test=False, **override):
  x, y = _images(n, side, channels)
  arrays = dict(x_train=x, y_train=y)
  if test:
    arrays.update(x_test=x[:12], y_test=y[:12])
  arrays.update(override)
  np.savez(path, **arrays)
  return str(path)


def _folder(root, sizes=((8, 8),) * 3, per_class=12, mode="L", layout="flat"):
  from PIL import Image
  for split in (["train", "test"] if layout == "split" else [""]):
    for c, (h, w) in enumerate(sizes):
      d = os.path.join(root, split, f"class_{c}")
      os.makedirs(d, exist_ok=True)
      x, _ = _images(per_class, max(h, w), 3 if mode == "RGB" else None, seed=c)
      for i in range(per_class if split != "test" else 3):
        img = x[i][:h, :w]
        Image.fromarray(img, mode=None).convert(mode).save(os.path.join(d, f"{i}.png"))
  return str(root)


def _config(name, **dataset):
  c = config_lib.base_config(name)
  c.dataset.val_fraction = 0.2
  c.dataset.update(dataset)
  c.train.batch_size = 8
  return c


def test_one_registry():
  assert not hasattr(ip, "TFDS_NAMES")
  assert set(config_lib.DATASETS) == set(ip.DATASETS)
  for name, known in ip.DATASETS.items():
    c = config_lib.base_config(name)
    assert (c.dataset.image_size, c.dataset.channels, c.dataset.num_classes) == (
        known["image_size"], known["channels"], known["num_classes"])
  c = config_lib.base_config("npz:/x.npz")
  assert (c.dataset.image_size, c.dataset.channels, c.dataset.num_classes) == (0, 0, 0)
  with pytest.raises(ValueError, match="npz:PATH"):
    config_lib.base_config("imagenet")


def test_derived_bins_follow_the_image_side():
  assert search_space.derived_bins(32) == (8, 4, 1)
  assert search_space.derived_bins(28) == (8, 4, 1)
  assert search_space.derived_bins(8) == (4, 2, 1)
  assert search_space.derived_bins(3) == (2, 1)
  for side in range(1, 70):
    c = config_lib.base_config("npz:x")
    c.dataset.update(image_size=side, channels=1, num_classes=2)
    c.space.size_bins, c.space.fc_max_side, c.space.max_depth = (), 0, 3
    space = search_space.from_config(c)
    assert space.count_architectures() > 1
    assert space.cfg.fc_max_side == space.cfg.size_bins[0] - 1


def test_npz_grey_carves_a_stratified_test_split(tmp_path):
  c = _config("npz:" + _npz(tmp_path / "d.npz"))
  data = ip.resolve(c)
  assert (c.dataset.image_size, c.dataset.channels, c.dataset.num_classes) == (8, 1, 3)
  assert data.train_images.shape[1:] == (8, 8, 1) and data.num_classes == 3
  assert len(data.test_labels) == 12 and np.bincount(data.test_labels).tolist() == [4, 4, 4]
  assert len(data.train_labels) + len(data.val_labels) == 48


def test_npz_with_a_test_split_and_colour(tmp_path):
  c = _config("npz:" + _npz(tmp_path / "d.npz", channels=3, test=True))
  data = ip.load(c)
  assert data.train_images.shape[1:] == (8, 8, 3) and len(data.test_labels) == 12
  assert len(data.train_labels) + len(data.val_labels) == 60


@pytest.mark.parametrize("override,dataset,match", [
    (dict(y_train=np.arange(60) % 3 - 1), {}, "labels run from -1"),
    (dict(y_train=np.arange(60) % 4), dict(num_classes=3), "labels run from 0 to 3; .* 0..2"),
    (dict(y_train=(np.arange(60) % 2) * 2), {}, "class 1 of 0..2 has no training"),
    (dict(y_train=np.zeros(60, int)), {}, "single class"),
    (dict(x_train=np.zeros((60, 8, 8), np.float32)), {}, "must be uint8"),
    (dict(x_train=np.zeros((60, 8, 6), np.uint8)), {}, "not square"),
    (dict(y_train=np.zeros(59, int)), {}, "must be 60 integer labels"),
    ({}, dict(image_size=16), "image_size=16 but .* 8x8"),
    ({}, dict(channels=3), "channels=3 but .* have 1"),
    (dict(x_train=np.zeros((60, 3, 8, 8), np.uint8)), {}, "3x8x8: channels first"),
    (dict(x_train=np.zeros((60, 3, 8, 8), np.uint8)), dict(resize=True, image_size=6),
     "channels first"),
    (dict(x_train=np.zeros((60, 8, 8, 2), np.uint8)), dict(resize=True, image_size=6),
     "have 2 channels; resizing"),
    ({}, dict(image_size=-4), "image_size=-4 must be >= 0"),
    (dict(x_train=np.zeros((60, 0, 0), np.uint8)), {}, "with H, W and C at least 1"),
    (dict(x_train=np.zeros((60, 8, 8, 0), np.uint8)), {}, "with H, W and C at least 1"),
    (dict(y_train=np.array([0, 1, 2] * 20, object)), {}, "holds object arrays"),
], ids=["negative", "above_k", "gap", "single", "float", "non_square", "length", "side",
        "channels", "chw", "chw_resize", "resize_2_channels", "negative_side", "no_pixels",
        "no_channels", "object_labels"])
def test_npz_bad_data_is_one_line(tmp_path, override, dataset, match):
  c = _config("npz:" + _npz(tmp_path / "d.npz", **override), **dataset)
  with pytest.raises(ip.DatasetError, match=match) as e:
    ip.resolve(c)
  assert "\n" not in str(e.value)


def test_npz_arrays_beyond_the_memory_are_one_line(tmp_path):
  """A header that says 3 PiB (a file of a kilobyte, or a real set larger than the RAM)."""
  import io
  import zipfile
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 32, 32, 3)})
  labels = io.BytesIO()
  np.save(labels, np.zeros(10, np.int64))
  with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
    z.writestr("x_train.npy", header.getvalue() + bytes(1024))
    z.writestr("y_train.npy", labels.getvalue())
  with pytest.raises(ip.DatasetError, match="huge.npz holds arrays larger than this "
                     "machine's memory") as e:
    ip.resolve(_config(f"npz:{tmp_path / 'huge.npz'}"))
  assert "\n" not in str(e.value)


def test_npz_uint64_labels_beyond_int64_are_named_as_they_are(tmp_path):
  y = np.array([0, 2**63 + 1] * 30, np.uint64)
  with pytest.raises(ip.DatasetError, match=f"y_train runs up to {2**63 + 1}; labels"):
    ip.resolve(_config("npz:" + _npz(tmp_path / "d.npz", y_train=y)))


def test_npz_given_a_folder_says_so(tmp_path):
  with pytest.raises(ip.DatasetError, match="is a folder, not an .npz file"):
    ip.resolve(_config(f"npz:{tmp_path}"))


def test_npz_labels_of_any_integer_type_or_shaped_n_by_1(tmp_path):
  """keras.datasets (cifar10, cifar100) give labels as uint8 [N, 1]; they are accepted."""
  x, y = _images(60, 8)
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y.astype(np.uint8)[:, None],
           x_test=x[:12], y_test=y[:12, None])
  data = ip.resolve(_config(f"npz:{tmp_path}/d.npz"))
  assert data.num_classes == 3 and data.test_labels.tolist() == y[:12].tolist()
  np.savez(tmp_path / "e.npz", x_train=x, y_train=y[:, None].repeat(2, 1))
  with pytest.raises(ip.DatasetError, match="must be 60 integer labels"):
    ip.resolve(_config(f"npz:{tmp_path}/e.npz"))


def test_labels_that_are_ids_not_indices_are_one_line_at_once(tmp_path):
  """Labels 0, 1, 10**9 (ids, not class indices): the missing classes were listed by
  building set(range(10**9)), gigabytes; now the first ten are found from the labels."""
  x, _ = _images(60, 8)
  np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1, 10**9] * 20))
  with pytest.raises(ip.DatasetError, match=r"classes 2, 3, .*, 11, \.\.\. of 0\.\.1000000000"):
    ip.resolve(_config(f"npz:{tmp_path}/d.npz"))
  present = np.array([0, 2, 3, 7])
  assert ip._first_missing(present, 9) == [1, 4, 5, 6, 8]
  assert ip._first_missing(present, 9, n=2) == [1, 4]
  assert ip._first_missing(np.array([5]), 6) == [0, 1, 2, 3, 4]


def test_a_stray_label_is_named(tmp_path, capsys):
  """One label 7 among classes 0..4: the classes it leaves empty are refused, and the
  message points at the label k was taken from; a stray label 5 (a sixth class in one
  example) is accepted with a warning."""
  x, y = _images(1000, 8, k=5)
  y[5] = 7
  np.savez(tmp_path / "oor.npz", x_train=x, y_train=y)
  with pytest.raises(ip.DatasetError, match=r"classes 5, 6 of 0\.\.7 have no training "
                     r"examples \(k is the largest label \+ 1, and label 7 is in 1 "
                     r"training example: a stray label\?"):
    ip.resolve(_config(f"npz:{tmp_path}/oor.npz"))
  y[5] = 5
  np.savez(tmp_path / "extra.npz", x_train=x, y_train=y)
  assert ip.resolve(_config(f"npz:{tmp_path}/extra.npz")).num_classes == 6
  err = capsys.readouterr().err
  assert "warning: npz:" in err and "class 5 of 0..5 has under 1%" in err, err
  ip.resolve(_config(f"npz:{tmp_path}/extra.npz"))  # again (the final stage): said once
  assert "warning" not in capsys.readouterr().err
  y[5] = 4  # balanced classes: no word
  np.savez(tmp_path / "ok.npz", x_train=x, y_train=y)
  ip.resolve(_config(f"npz:{tmp_path}/ok.npz"))
  assert "warning" not in capsys.readouterr().err


def test_npz_missing_keys_and_paths(tmp_path):
  np.savez(tmp_path / "bad.npz", images=np.zeros((3, 2, 2), np.uint8))
  with pytest.raises(ip.DatasetError, match="needs x_train and y_train"):
    ip.load(_config(f"npz:{tmp_path}/bad.npz"))
  with pytest.raises(ip.DatasetError, match="no such file"):
    ip.load(_config(f"npz:{tmp_path}/none.npz"))
  for name, text in (("text.npz", "not a zip"), ("empty.npz", "")):
    (tmp_path / name).write_text(text)
    with pytest.raises(ip.DatasetError, match="not a readable .npz"):
      ip.load(_config(f"npz:{tmp_path}/{name}"))
  np.save(tmp_path / "x.npy", np.zeros((3, 2, 2), np.uint8))  # a .npy, not a .npz
  with pytest.raises(ip.DatasetError, match="one array .*np.savez") as e:
    ip.load(_config(f"npz:{tmp_path}/x.npy"))
  assert "\n" not in str(e.value)


def test_a_path_under_home_may_start_with_a_tilde(tmp_path, monkeypatch):
  """`--config.dataset.name=npz:~/d.npz`: the shell expands no ~ after "npz:"."""
  monkeypatch.setenv("HOME", str(tmp_path))
  _npz(tmp_path / "d.npz")
  assert ip.resolve(_config("npz:~/d.npz")).num_classes == 3
  _folder(tmp_path / "imgs")
  assert ip.resolve(_config("folder:~/imgs")).num_classes == 3


def test_fewer_examples_than_a_batch(tmp_path):
  c = _config("npz:" + _npz(tmp_path / "d.npz"))
  c.train.batch_size = 64
  with pytest.raises(ip.DatasetError, match="fewer than one batch"):
    ip.resolve(c)


def test_resize_npz(tmp_path):
  c = _config("npz:" + _npz(tmp_path / "d.npz", side=12), resize=True, image_size=6)
  data = ip.resolve(c)
  assert data.train_images.shape[1:] == (6, 6, 1) and data.test_images.shape[1:] == (6, 6, 1)


def test_folder_flat_layout(tmp_path):
  c = _config("folder:" + _folder(tmp_path / "imgs"))
  data = ip.resolve(c)
  assert (c.dataset.image_size, c.dataset.channels, c.dataset.num_classes) == (8, 1, 3)
  assert len(data.test_labels) == round(0.2 * 36)
  assert sorted(set(data.train_labels.tolist())) == [0, 1, 2]


def test_folder_imagefolder_layout_rgb(tmp_path):
  c = _config("folder:" + _folder(tmp_path / "imgs", mode="RGB", layout="split"))
  data = ip.resolve(c)
  assert data.train_images.shape[1:] == (8, 8, 3)
  assert len(data.test_labels) == 9 and len(data.train_labels) + len(data.val_labels) == 36
  c = _config(c.dataset.name, channels=1)  # converts every image to grey
  assert ip.load(c).train_images.shape[1:] == (8, 8, 1)


def test_the_data_s_own_validation_split_is_used(tmp_path):
  """A folder's validation/ (or val/) and an npz's x_val, y_val are the search's validation
  set, as is tfds' "validation" split; the final stage trains on train and validation."""
  root = _folder(tmp_path / "imgs", mode="RGB", layout="split")
  os.rename(os.path.join(root, "test"), os.path.join(root, "validation"))  # 3 per class
  for name in ("validation", "val"):
    if name == "val":
      os.rename(os.path.join(root, "validation"), os.path.join(root, "val"))
    c = _config(f"folder:{root}")
    data = ip.resolve(c)
    assert len(data.val_labels) == 9 and len(data.train_labels) == 36 - round(0.2 * 36)
    assert sorted(data.val_labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(data.test_labels) == 7
    assert len(ip.load(c, final=True).train_labels) == 36 - 7 + 9
  x, y = _images(60, 8)
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:6], y_val=y[:6],
           x_test=x[:9], y_test=y[:9])
  c = _config(f"npz:{tmp_path}/d.npz")
  data = ip.resolve(c)
  assert (len(data.train_labels), len(data.val_labels), len(data.test_labels)) == (60, 6, 9)
  assert np.array_equal(data.val_images[..., 0], x[:6])
  c.dataset.train_fraction = 0.5  # a search setting: the given validation set stays whole
  assert (len(ip.load(c).train_labels), len(ip.load(c).val_labels)) == (30, 6)
  assert len(ip.load(c, final=True).train_labels) == 66


@pytest.mark.parametrize("case,match", [
    ("x_without_y", "x_val with y_val"), ("empty", "x_val is empty"),
    ("other_size", "validation images are 6x6x1 but training images 8x8x1"),
    ("label_range", "validation labels run from 0 to 5"),
    # A resize does not change channels, so it is not the advice.
    ("other_channels", "validation images have 3 channels but training images 1; give")])
def test_a_bad_given_validation_split_is_one_line(tmp_path, case, match):
  x, y = _images(60, 8)
  val = dict(x_without_y=dict(x_val=x[:6]), empty=dict(x_val=x[:0], y_val=y[:0]),
             other_size=dict(x_val=x[:6, :6, :6], y_val=y[:6]),
             label_range=dict(x_val=x[:6], y_val=np.arange(6)),
             other_channels=dict(x_val=np.repeat(x[:6, ..., None], 3, -1), y_val=y[:6]))[case]
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y, **val)
  resize = dict(resize=True, image_size=8) if case == "other_channels" else {}
  with pytest.raises(ip.DatasetError, match=match) as e:
    ip.resolve(_config(f"npz:{tmp_path}/d.npz", **resize))
  assert "\n" not in str(e.value)


def test_a_folder_with_validation_and_val_is_refused(tmp_path):
  root = _folder(tmp_path / "imgs", layout="split")
  for name in ("validation", "val"):
    shutil.copytree(os.path.join(root, "test"), os.path.join(root, name))
  with pytest.raises(ip.DatasetError, match="has val/ and validation/, which are one split"):
    ip.resolve(_config(f"folder:{root}"))


@pytest.mark.parametrize("names", [("Train", "Test"), ("train", "valid"), ("TRAIN", "Val")])
def test_split_folders_in_any_case_and_valid(tmp_path, names):
  """Kaggle's and Roboflow's train/valid/test, and Train/ and Test/: not class folders."""
  root = _folder(tmp_path / "imgs", layout="split")
  for old, new in zip(("train", "test"), names):
    os.rename(os.path.join(root, old), os.path.join(root, new))
  data = ip.load(_config(f"folder:{root}"))
  assert sources.folder_classes(root) == ["class_0", "class_1", "class_2"]
  assert len(data.train_labels) + len(data.val_labels) + len(data.test_labels) == 45
  if names[1].lower() == "test":
    assert len(data.test_labels) == 9  # the test folder's own
  else:
    assert len(data.val_labels) == 9  # the validation folder's own


def test_a_resize_beyond_memory_is_refused_before_it_is_made(tmp_path):
  """Killed by the OS on the way, it would leave no word of why."""
  for name in ("npz:" + _npz(tmp_path / "d.npz"), "folder:" + _folder(tmp_path / "imgs")):
    with pytest.raises(ip.DatasetError, match="would take .* GiB, more than half of this "
                       "machine's .*smaller --config.dataset.image_size") as e:
      ip.resolve(_config(name, resize=True, image_size=10**6))
    assert "\n" not in str(e.value)


def test_the_memory_check_counts_every_split_before_reading_and_what_changes_only(
    tmp_path, monkeypatch):
  """Folders: all splits counted before an image is read (one is peeked at for grey or
  colour); arrays already at the side are not counted, as nothing is made of them."""
  root = _folder(tmp_path / "imgs", layout="split")  # grey 8x8: 36 train + 9 test
  reads = []
  read = sources.read_image
  monkeypatch.setattr(sources, "read_image", lambda *a: reads.append(a) or read(*a))
  grey = 45 * 16 * 16  # bytes resized to 16x16x1
  monkeypatch.setattr(sources, "memory_bytes", lambda: 2 * grey - 2)
  with pytest.raises(ip.DatasetError, match="45 images resized to 16x16x1 would take"):
    ip.resolve(_config("folder:" + root, resize=True, image_size=16))
  assert len(reads) == 1
  monkeypatch.setattr(sources, "memory_bytes", lambda: 2 * grey)  # grey: fits (not 3 channels)
  assert ip.resolve(_config("folder:" + root, resize=True, image_size=16))
  monkeypatch.setattr(sources, "memory_bytes", lambda: 2)  # nothing to make: nothing to refuse
  assert ip.resolve(_config("npz:" + _npz(tmp_path / "d.npz"), resize=True, image_size=8))


def test_a_validation_split_of_one_class_is_refused(tmp_path):
  """Every model would be `no_learning` (a constant guess scores 1.0), retried six times."""
  x, y = _images(60, 8)
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:5], y_val=np.zeros(5, y.dtype))
  with pytest.raises(ip.DatasetError, match="validation split holds class 0 only"):
    ip.resolve(_config(f"npz:{tmp_path}/d.npz"))
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:5], y_val=y[:5])
  assert len(np.unique(y[:5])) > 1 and ip.resolve(_config(f"npz:{tmp_path}/d.npz"))


def test_folder_mixed_sizes_need_resize(tmp_path):
  root = _folder(tmp_path / "imgs", sizes=((8, 8), (10, 10), (8, 8)))
  with pytest.raises(ip.DatasetError, match="different sizes .*resize=True") as e:
    ip.resolve(_config("folder:" + root))
  assert "\n" not in str(e.value)
  c = _config("folder:" + root, resize=True, image_size=8)
  assert ip.resolve(c).train_images.shape[1:] == (8, 8, 1)
  with pytest.raises(ip.DatasetError, match="resize=True needs .*image_size > 0"):
    ip.resolve(_config("folder:" + root, resize=True))  # not "set resize=True"


def test_an_empty_test_split_is_refused(tmp_path):
  """Given but empty, a test split would leave the final stage nothing to test on."""
  x, y = _images(60, 8)
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])
  with pytest.raises(ip.DatasetError, match="x_test is empty"):
    ip.resolve(_config(f"npz:{tmp_path}/d.npz"))
  root = _folder(tmp_path / "imgs", layout="split")
  for c in range(3):
    for f in os.listdir(os.path.join(root, "test", f"class_{c}")):
      os.remove(os.path.join(root, "test", f"class_{c}", f))
  with pytest.raises(ip.DatasetError, match="test/ holds no images"):
    ip.resolve(_config(f"folder:{root}"))


def test_folder_classes_sort_as_strings_and_other_files_are_skipped(tmp_path):
  """As documented in configs/custom.py: "10" before "2" (tfds and torchvision agree);
  hidden files, Thumbs.db and README.txt are skipped; extensions in any case."""
  from PIL import Image
  for name, value in (("2", 200), ("10", 100)):
    d = tmp_path / "imgs" / name
    os.makedirs(d)
    for i in range(12):
      Image.fromarray(np.full((8, 8), value, np.uint8)).save(d / f"{i}.PNG")
    for junk in (".DS_Store", "._0.png", "Thumbs.db", "README.txt"):
      (d / junk).write_bytes(b"not an image")
  data = ip.load(_config(f"folder:{tmp_path}/imgs"))
  x = np.concatenate([data.train_images, data.val_images, data.test_images])
  y = np.concatenate([data.train_labels, data.val_labels, data.test_labels])
  assert len(y) == 24 and set(x[y == 0].ravel()) == {100} and set(x[y == 1].ravel()) == {200}


def test_folder_images_of_more_than_8_bits(tmp_path):
  """16-bit grey PNGs are scaled to 8 bits (PIL's convert clipped them white); 32-bit
  floats, which have no known range, are refused in one line."""
  from PIL import Image
  root = tmp_path / "imgs"
  for c in range(2):
    os.makedirs(root / f"c{c}")
    for i in range(12):
      x = np.full((8, 8), 257 * (60 + 100 * c), np.uint16)
      Image.fromarray(x).save(root / f"c{c}" / f"{i}.png")
  assert Image.open(root / "c0" / "0.png").mode.startswith("I;16")
  data = ip.load(_config(f"folder:{root}"))
  assert data.train_images.shape[1:] == (8, 8, 1)
  x = np.concatenate([data.train_images, data.val_images, data.test_images])
  y = np.concatenate([data.train_labels, data.val_labels, data.test_labels])
  assert set(x[y == 0].ravel()) == {60} and set(x[y == 1].ravel()) == {160}
  Image.fromarray(np.zeros((8, 8), np.float32)).save(root / "c1" / "f.tiff")
  with pytest.raises(ip.DatasetError, match="f.tiff is a floating-point image") as e:
    ip.load(_config(f"folder:{root}"))
  assert "\n" not in str(e.value)


def test_folder_images_read_as_32_bit_integers(tmp_path):
  """Mode I (how some Pillow versions open 16-bit PNGs): scaled like 16-bit images when
  beyond 0..255, kept when within, refused beyond 0..65535."""
  from PIL import Image
  root = tmp_path / "imgs"
  for c in range(2):
    os.makedirs(root / f"c{c}")
    for i in range(12):
      value = 257 * (60 + 100 * c) if i % 2 else 60 + 100 * c
      Image.fromarray(np.full((8, 8), value, np.int32)).save(root / f"c{c}" / f"{i}.tiff")
  assert Image.open(root / "c0" / "1.tiff").mode == "I"
  data = ip.load(_config(f"folder:{root}"))
  x = np.concatenate([data.train_images, data.val_images, data.test_images])
  y = np.concatenate([data.train_labels, data.val_labels, data.test_labels])
  assert set(x[y == 0].ravel()) == {60} and set(x[y == 1].ravel()) == {160}
  # A 16-bit PNG opened as mode I (older Pillow): scaled whatever its values, so a
  # dark one reads as dark as with a Pillow that opens it as I;16.
  dark = Image.fromarray(np.full((8, 8), 200, np.int32))
  dark.format = "PNG"
  assert set(np.asarray(sources.eight_bit(dark, "dark.png")).ravel()) == {1}
  Image.fromarray(np.full((8, 8), 70000, np.int32)).save(root / "c1" / "big.tiff")
  with pytest.raises(ip.DatasetError, match="big.tiff is a 32-bit image with pixels "
                     "outside 0..65535"):
    ip.load(_config(f"folder:{root}"))


def test_palette_images_with_transparency_are_read_without_a_warning(tmp_path):
  import warnings
  from PIL import Image
  root = _folder(tmp_path / "imgs", mode="P")
  for c in range(3):
    file = os.path.join(root, f"class_{c}", "0.png")
    Image.open(file).save(file, transparency=bytes([0] * 255 + [255]))  # bytes: PIL warns
    assert isinstance(Image.open(file).info["transparency"], bytes)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    data = ip.load(_config(f"folder:{root}"))
  assert data.train_images.shape[-1] == 3


def test_large_images_below_pils_refusal_are_read_without_its_warning(tmp_path, monkeypatch):
  import warnings
  from PIL import Image
  root = _folder(tmp_path / "imgs")
  Image.open(os.path.join(root, "class_0", "0.png")).save(os.path.join(root, "class_0",
                                                                       "t.tif"))  # (warned
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # of as it loads) 8x8 = 64 > 40
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert len(ip.load(_config(f"folder:{root}")).train_labels) > 0


def test_folder_grey_with_alpha_is_grey(tmp_path):
  """LA PNGs (grey + alpha) give one channel, like grey ones, and mix with them; they
  gave 3, and a folder of both was refused for mixed channels."""
  root = _folder(tmp_path / "imgs")
  from PIL import Image
  Image.open(os.path.join(root, "class_0", "0.png")).convert("LA").save(
      os.path.join(root, "class_0", "0.png"))
  data = ip.load(_config(f"folder:{root}"))
  assert data.train_images.shape[1:] == (8, 8, 1)


def test_a_folder_search_recorded_in_rgb_resumes_in_rgb(tmp_path):
  """Grey-with-alpha folders were read as RGB before: such a record (channels 3 in its
  fingerprint) resumes with channels left to the data, instead of being refused."""
  root = _folder(tmp_path / "imgs", mode="LA")
  config = _search_config(f"folder:{root}")
  config.search.schedule = "1.0:2,0.5:1"
  old = _search_config(f"folder:{root}")
  old.search.schedule, old.dataset.channels = config.search.schedule, 3
  search.run_search(old, str(tmp_path / "w"), log_interval=100, tensorboard=False,
                    max_models=2)
  assert search.run_search(config, str(tmp_path / "w"), log_interval=100,
                           tensorboard=False).finished


def test_folder_layout_mistakes_are_named(tmp_path):
  """train/ beside dev/ (not a split name read here), or images one folder too deep,
  are said to be folders, not "no images"; a folder named like an image is skipped."""
  root = _folder(tmp_path / "imgs", layout="split")
  os.rename(os.path.join(root, "test"), os.path.join(root, "dev"))
  with pytest.raises(ip.DatasetError, match="dev holds folders \\(class_0, class_1, "
                     "class_2\\), not images; the layouts are") as e:
    ip.resolve(_config(f"folder:{root}"))
  assert "\n" not in str(e.value)
  root = _folder(tmp_path / "flat")
  os.makedirs(os.path.join(root, "class_0", "odd.png"))
  assert len(ip.load(_config(f"folder:{root}")).train_labels) > 0
  # The folder above the class folders: the one to give is named.
  above = _folder(tmp_path / "above" / "data")
  with pytest.raises(ip.DatasetError, match=f"has 1 class folder.* at least two \\(if "
                     f"{above} holds the class folders, give folder:{above}\\)"):
    ip.load(_config(f"folder:{tmp_path / 'above'}"))


def test_folder_images_of_other_sizes_are_refused_at_the_first_one(tmp_path, monkeypatch):
  """Not after every image is read (a folder of photos can outgrow the memory first);
  nor are they read where the first one's size, times their number, does not fit."""
  from PIL import Image
  root = _folder(tmp_path / "imgs")  # grey 8x8: 36
  Image.new("L", (8, 6)).save(root + "/class_1/0.png")  # the 13th read
  reads = []
  read = sources.read_image
  monkeypatch.setattr(sources, "read_image", lambda *a: reads.append(a) or read(*a))
  with pytest.raises(ip.DatasetError, match="images of different sizes .*class_0/0.png is "
                     "8x8, .*class_1/0.png is 6x8"):
    ip.load(_config(f"folder:{root}"))
  assert len(reads) == 1 + 13  # the first one peeked at for the memory check, then 13
  Image.new("L", (8, 6)).save(root + "/class_0/0.png")  # the first
  reads.clear()
  with pytest.raises(ip.DatasetError, match="class_0/0.png is 6x8, not square"):
    ip.load(_config(f"folder:{root}"))
  assert len(reads) == 2
  reads.clear()
  monkeypatch.setattr(sources, "memory_bytes", lambda: 2 * 36 * 48 - 2)
  with pytest.raises(ip.DatasetError, match="36 images of 6x8x1 \\(the first one read\\) "
                     "would take .* set --config.dataset.resize=True"):
    ip.load(_config(f"folder:{root}"))
  assert len(reads) == 1


def test_folder_image_extensions_pillow_reads_and_those_it_may_not(tmp_path, capsys):
  """.jfif, .jpe, .pbm, .pnm are read; a format that needs a plugin this Pillow lacks
  (.heic) is left out with one line that says so (a folder of JPEGs with a stray one
  still reads, as before), not without a word."""
  from PIL import Image
  root = _folder(tmp_path / "imgs")
  for i, (ext, fmt) in enumerate([(".jfif", "JPEG"), (".JPE", "JPEG"), (".pnm", "PPM")]):
    Image.new("L", (8, 8), 200).save(f"{root}/class_2/extra{i}{ext}", format=fmt)
  data = ip.load(_config(f"folder:{root}", val_fraction=0.25))
  assert len(data.train_labels) + len(data.val_labels) + len(data.test_labels) == 39
  with open(f"{root}/class_0/photo.heic", "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypheic" + bytes(64))
  if ".heic" in Image.registered_extensions():  # (pillow-heif, where installed): read
    with pytest.raises(ip.DatasetError, match="cannot read the image .*photo.heic"):
      ip.load(_config(f"folder:{root}"))
  else:
    capsys.readouterr()
    data = ip.load(_config(f"folder:{root}", val_fraction=0.25))
    assert len(data.train_labels) + len(data.val_labels) + len(data.test_labels) == 39
    assert capsys.readouterr().err == (
        f"folder:{root}: left out 1 image(s) of {root} in formats this Pillow has no "
        "plugin for (.heic); convert them to PNG or JPEG to include them\n")


@pytest.mark.parametrize("case,match", [
    ("missing", "no such directory"), ("file", "is a file, not a folder"),
    ("one_class", "at least two"), ("empty_class", "holds no images"),
    ("broken", "cannot read the image"), ("two_channels", "grey \\(1\\) or RGB \\(3\\)"),
    ("nested", "class_1 also holds images in its subfolder more/deeper, which are not read"),
    ("huge", "has more pixels than PIL reads safely"),
    ("dangling", "x.png is a link to a missing file")])
def test_folder_errors(tmp_path, case, match, monkeypatch):
  root = tmp_path / "imgs"
  if case == "file":
    root.write_bytes(b"not a folder")
  elif case != "missing":
    _folder(root, sizes=((8, 8),) * (1 if case == "one_class" else 2))
  if case == "empty_class":
    os.makedirs(root / "class_9")
  if case == "broken":
    (root / "class_0" / "x.png").write_bytes(b"no png")
  if case == "dangling":  # an image left out without a word, before
    os.symlink(tmp_path / "gone.png", root / "class_0" / "x.png")
  if case == "nested":  # would be left out of training without a word
    os.makedirs(root / "class_1" / "more" / "deeper")
    os.rename(root / "class_1" / "0.png", root / "class_1" / "more" / "deeper" / "0.png")
  if case == "huge":  # a decompression bomb to PIL: 8x8 images over a limit of 2 x 20 pixels
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
  config = _config(f"folder:{root}")
  if case == "two_channels":
    config.dataset.channels = 2
  with pytest.raises(ip.DatasetError, match=match) as e:
    ip.load(config)
  assert "\n" not in str(e.value)


def test_tfds_by_name_reads_the_builder_info(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  from test_input_pipeline import _mock_source_cls
  c = _config("tfds:fashion_mnist", data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=100,
                              mock_array_record_data_source=_mock_source_cls()()):
    data = ip.resolve(c)
    assert (c.dataset.image_size, c.dataset.channels, c.dataset.num_classes) == (28, 1, 10)
    assert len(data.test_labels) == 100  # the builder's own test split
    assert len(data.train_labels) + len(data.val_labels) == 100  # validation carved
    # A data set with a validation split: it is the validation set, train stays whole.
    monkeypatch.setattr(sources, "tfds_splits", lambda *a: ["train", "validation", "test"])
    given = ip.load(_config("tfds:fashion_mnist", data_dir=str(tmp_path)))
    assert (len(given.train_labels), len(given.val_labels), len(given.test_labels)) == (
        100, 100, 100)
    # A data set without a test split: test is carved out of train.
    monkeypatch.setattr(sources, "tfds_splits", lambda *a: ["train"])
    carved = ip.load(_config("tfds:fashion_mnist", data_dir=str(tmp_path)))
    # Resized: every split counted before any is read, grey from the image feature.
    monkeypatch.setattr(sources, "tfds_splits", lambda *a: ["train", "test"])
    monkeypatch.setattr(sources, "memory_bytes", lambda: 2 * 200 * 16 * 16 * 1 - 2)
    with pytest.raises(ip.DatasetError, match="200 images resized to 16x16x1 would take"):
      ip.load(_config("tfds:fashion_mnist", data_dir=str(tmp_path), resize=True,
                      image_size=16))
  assert len(carved.test_labels) == 20
  assert len(carved.train_labels) + len(carved.val_labels) == 80
  assert "tensorflow" not in sys.modules


def test_tfds_unknown_name_is_one_line(tmp_path):
  with pytest.raises(ip.DatasetError, match="has no data set 'no_such_set'"):
    ip.load(_config("tfds:no_such_set", data_dir=str(tmp_path)))


@pytest.mark.parametrize("tfds_name,why", [
    ("mnist/no_such_config", "BuilderConfig no_such_config not found"),
    ("mnist:9.9.9", "cannot be loaded at version 9.9.9"),
    ("mnist/../x", "Parsing builder name string"),
    ("imdb_reviews", "not an image classification data set .its features are text, label"),
])
def test_tfds_names_it_cannot_open_or_read_are_one_line(tfds_name, why, tmp_path):
  """A builder config or version tfds lacks, a name it cannot parse, or a set that is not
  image classification (read from the builder's info, before anyone is told to prepare
  it): one line, nothing written."""
  with pytest.raises(ip.DatasetError, match=why) as e:
    ip.load(_config("tfds:" + tfds_name, data_dir=str(tmp_path)))
  assert "\n" not in str(e.value) and "tfds build" not in str(e.value)
  assert e.value.__cause__ is None  # no traceback wall
  assert e.value.__context__ is None or e.value.__suppress_context__
  assert list(tmp_path.iterdir()) == []


def test_builtin_config_is_checked_not_trusted():
  c = config_lib.base_config("mnist")
  c.dataset.image_size = 32
  with pytest.raises(ip.DatasetError, match="image_size=32 but mnist has image_size=28"):
    ip.resolve(c)


def _search_config(name, evaluator="train"):
  c = config_lib.base_config(name)
  c.dataset.val_fraction = 0.25
  c.space.max_depth = 2
  c.space.conv_filters = (4,)
  c.space.conv_kernels = (3,)
  c.space.fc_units = (8,)
  c.space.size_bins = ()
  c.space.fc_max_side = 0
  c.search.schedule = "1.0:3"
  c.search.replay_samples = 5
  c.evaluator = evaluator
  c.train.batch_size = 8
  c.train.eval_batch_size = 16
  c.train.epochs = 1
  c.train.max_restarts = 0
  c.final.run_after_search = False
  return c


@pytest.mark.parametrize("inside", ["run", "train/run", "class_0/../run"])
def test_a_work_directory_inside_the_data_folder_is_refused(tmp_path, inside):
  """Its agent/ and plots/ would become a class (or a split) of the data once made, and
  the search could then never be finished: refused at the start, nothing written."""
  root = _folder(tmp_path / "imgs", layout="split" if "train" in inside else "flat")
  before = sorted(p for p in (tmp_path / "imgs").rglob("*"))
  config = _search_config("folder:" + root, evaluator="synthetic")
  with pytest.raises(store_lib.WorkdirError, match="lies inside the data folder"):
    search.run_search(config, os.path.join(root, inside), tensorboard=False)
  assert sorted(p for p in (tmp_path / "imgs").rglob("*")) == before
  # Beside the data it runs.
  assert search.run_search(config, str(tmp_path / "imgs_run"), tensorboard=False).finished


@pytest.mark.parametrize("kind", ["npz", "folder"])
def test_search_end_to_end_on_your_data(tmp_path, kind):
  path = (_npz(tmp_path / "d.npz", n=48) if kind == "npz"
          else _folder(tmp_path / "imgs", per_class=16, mode="RGB"))
  config = _search_config(f"{kind}:{path}")
  result = search.run_search(config, str(tmp_path / "w"), log_interval=100,
                             tensorboard=False)
  assert result.finished and result.unique_models == 3
  from metaqnn import store as store_lib
  store = store_lib.open_existing(str(tmp_path / "w"))
  stored = store.config()
  models = list(store.models())
  store.close()
  assert stored.dataset.image_size == 8 and stored.dataset.num_classes == 3
  assert stored.dataset.channels == (1 if kind == "npz" else 3)
  assert all(m.status in ("ok", "no_learning") and m.params and m.flops for m in models)
  # Time waiting for compiles is kept per model and summed by inspect (the first model
  # has nothing compiled ahead).
  from metaqnn import inspect as inspect_lib
  summary = inspect_lib.summarize(str(tmp_path / "w"))
  assert summary["time"]["models"] == 3
  assert 0 < summary["time"]["compile_wait_seconds"] <= summary["time"]["seconds"]
  assert "waiting for compiles" in inspect_lib.render(summary)
  for seconds, said in ((17.3, "17 s"), (95.0, "1.6 min"), (5400.0, "1.50 h")):  # not 0.00 h
    summary["time"]["seconds"] = seconds
    assert f"time in candidates: {said} (" in inspect_lib.render(summary)
  # Resuming the finished search with the same command is accepted.
  assert search.run_search(config, str(tmp_path / "w"), log_interval=100).finished


def test_the_final_stage_refuses_data_that_changed_since_the_search(tmp_path):
  from metaqnn import finalize
  from metaqnn import store as store_lib
  path = _npz(tmp_path / "d.npz", n=48)
  config = _search_config(f"npz:{path}")
  config.final.epochs, config.final.top, config.final.ensemble = 1, 1, 1
  search.run_search(config, str(tmp_path / "w"), log_interval=100, tensorboard=False)
  with np.load(path) as z:
    arrays = dict(z)
  changed = dict(arrays, x_train=arrays["x_train"].copy())
  changed["x_train"][0, 0, 0] ^= 1  # one pixel
  np.savez(path, **changed)
  with pytest.raises(store_lib.WorkdirError, match="differs from what this search began on "
                     ".* would retrain the top models on other data"):
    finalize.finalize(str(tmp_path / "w"))
  assert not (tmp_path / "w" / "final").exists()
  np.savez(path, **arrays)  # restored: the final stage runs
  results = finalize.finalize(str(tmp_path / "w"))
  assert len(results["models"]) == 1
  # Its model evaluated later: on the data it was tested on, or not at all.
  from metaqnn import inspect as inspect_lib
  model = os.path.dirname(results["models"][0]["checkpoint"])
  now = inspect_lib.checkpoint_summary(model, split="test")["evaluated"]["accuracy"]
  assert now == pytest.approx(results["models"][0]["test_accuracy"])
  np.savez(path, **dict(arrays, x_test=arrays["x_train"][:12], y_test=arrays["y_train"][:12]))
  with pytest.raises(store_lib.WorkdirError, match="changed since this model was trained "
                     "and tested on it"):
    inspect_lib.checkpoint_summary(model, split="test")


def test_transfer_onto_your_data_takes_its_classes(tmp_path, monkeypatch):
  """configs/custom.py leaves num_classes to the data: transfer reads it there too."""
  from metaqnn import transfer
  config = _search_config(f"npz:{_npz(tmp_path / 'd.npz', n=48)}")
  config.final.epochs = 1
  meta = transfer.transfer(config, "[C(4,3,1), SM(10)]", str(tmp_path / "t"))
  assert meta["arch"] == "[C(4,3,1), SM(3)]" and meta["input_shape"] == [8, 8, 1]
  # Run again, a finished transfer trains nothing; on changed data it is refused.
  from metaqnn import train

  def no_training(*args, **kwargs):
    raise AssertionError("it trained again")

  monkeypatch.setattr(train.FinalTrainer, "fit", no_training)
  assert transfer.transfer(config, "[C(4,3,1),SM(10)]", str(tmp_path / "t")) == meta
  before = (tmp_path / "t" / "meta.json").read_text()
  x, y = _images(48, 8)
  y[0] = (y[0] + 1) % 3  # one label corrected at the same path
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
  with pytest.raises(ValueError, match="this transfer run on other data: npz:.* changed"):
    transfer.transfer(config, "[C(4,3,1), SM(10)]", str(tmp_path / "t"))
  assert (tmp_path / "t" / "meta.json").read_text() == before


@pytest.mark.parametrize("name", ["npz:{d}/none.npz", "folder:{d}/none", "npz:{d}/one.npz"])
def test_bad_data_leaves_no_workdir(tmp_path, name):
  np.savez(tmp_path / "one.npz", x_train=np.zeros((40, 4, 4), np.uint8),
           y_train=np.zeros(40, int))
  config = _search_config(name.format(d=tmp_path), evaluator="synthetic")
  with pytest.raises(ip.DatasetError):
    search.run_search(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_main_command_with_a_wrong_path_is_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "metaqnn.main", "--config=configs/custom.py",
       f"--workdir={tmp_path}/w", f"--config.dataset.name=folder:{tmp_path}/nothing"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      f"error: folder:{tmp_path}/nothing: no such directory."]
  assert not os.path.exists(tmp_path / "w")


def test_space_command_reads_the_shape_of_custom_data(tmp_path):
  """`metaqnn.space` on configs/custom.py: the image side and classes come from the data."""
  path = _npz(tmp_path / "d.npz", side=8)
  run = lambda name: subprocess.run(
      [sys.executable, "-m", "metaqnn.space", "stats", "--config=configs/custom.py",
       f"--config.dataset.name={name}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  out = run(f"npz:{path}")
  assert out.returncode == 0, out.stderr
  assert (json.loads(out.stdout)["config"]["image_size"],
          json.loads(out.stdout)["config"]["num_classes"]) == (8, 3)
  bad = run(f"npz:{tmp_path}/none.npz")
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def _relative_npz_search(tmp_path, monkeypatch):
  """A search config naming data/d.npz relative to the current directory, data/."""
  data = tmp_path / "data"
  data.mkdir()
  _npz(data / "d.npz", n=48)
  monkeypatch.chdir(data)
  return data, _search_config("npz:d.npz", evaluator="synthetic")


def test_a_relative_path_is_recorded_absolute(tmp_path, monkeypatch):
  from metaqnn import store as store_lib
  data, config = _relative_npz_search(tmp_path, monkeypatch)
  search.run_search(config, str(tmp_path / "w"), log_interval=100, tensorboard=False)
  store = store_lib.open_existing(str(tmp_path / "w"))
  assert store.config().dataset.name == f"npz:{data / 'd.npz'}"
  store.close()
  # The same command from the same directory resumes it; so does the absolute path.
  assert search.run_search(config, str(tmp_path / "w"), log_interval=100).finished
  monkeypatch.chdir(tmp_path)
  config.dataset.name = f"npz:{data / 'd.npz'}"
  assert search.run_search(config, str(tmp_path / "w"), log_interval=100).finished


def test_a_record_made_with_a_relative_path_still_resumes(tmp_path, monkeypatch):
  """Records made before paths were recorded absolute keep their relative name."""
  from metaqnn import input_pipeline
  _, config = _relative_npz_search(tmp_path, monkeypatch)
  config.search.schedule = "1.0:3,0.5:2"
  with monkeypatch.context() as m:  # as before: the name recorded as given
    m.setattr(input_pipeline, "absolute", lambda config: None)
    search.run_search(config, str(tmp_path / "w"), log_interval=100, tensorboard=False,
                      max_models=2)
  result = search.run_search(config, str(tmp_path / "w"), log_interval=100,
                             tensorboard=False)
  assert result.finished and result.unique_models == 5


KILLED_SEARCH = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from metaqnn import search
import test_custom_data as t
config = t._search_config(sys.argv[1])
config.search.schedule = "1.0:8"
search.run_search(config, sys.argv[2], log_interval=100, tensorboard=False)
"""


@pytest.mark.slow
def test_resuming_on_changed_data_is_refused(tmp_path):
  """Images added to a folder between runs: the rewards would mix two data sets. The
  record (killed mid-search, its write-ahead log still there) is left byte for byte."""
  import signal
  import time
  from PIL import Image
  from metaqnn import store as store_lib
  root = _folder(tmp_path / "imgs", per_class=12)
  work = tmp_path / "w"
  script = tmp_path / "run.py"
  script.write_text(KILLED_SEARCH.format(root=ROOT, tests=os.path.join(ROOT, "tests")))
  proc = subprocess.Popen([sys.executable, str(script), f"folder:{root}", str(work)])
  count = lambda: len(list(store_lib.open_existing(str(work)).models()))
  while proc.poll() is None and (not (work / "metaqnn.db").exists() or count() < 1):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, "the search ended before it could be killed"
  snapshot = lambda: {p.name: p.read_bytes() for p in work.rglob("*") if p.is_file()}
  before = snapshot()
  assert "metaqnn.db-wal" in before
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, "class_0", "new.png"))
  config = _search_config(f"folder:{root}")
  with pytest.raises(store_lib.WorkdirError, match=r"differs from what this search began on "
                     r"\(\d+ train, \d+ val, \d+ test examples then, .* now\)"):
    search.run_search(config, str(work), log_interval=100, tensorboard=False)
  import gc
  gc.collect()
  assert snapshot() == before
  os.remove(os.path.join(root, "class_0", "new.png"))  # restored: it resumes
  config.search.schedule = "1.0:8"
  assert search.run_search(config, str(work), log_interval=100, tensorboard=False).finished


def test_a_relative_data_dir_stays_absolute_on_resume(tmp_path, monkeypatch):
  from metaqnn import store as store_lib
  monkeypatch.chdir(tmp_path)
  config = config_lib.base_config("digits")
  config.evaluator, config.search.schedule = "synthetic", "1.0:3"
  config.dataset.data_dir = "tfds_data"
  for _ in range(2):  # the run, then its resume
    search.run_search(config, str(tmp_path / "w"), log_interval=100, tensorboard=False)
    store = store_lib.open_existing(str(tmp_path / "w"))
    assert store.config().dataset.data_dir == str(tmp_path / "tfds_data")
    store.close()


LEGACY_KILL = """
import os, sys
sys.path.insert(0, {root!r})
from metaqnn import store as store_lib
store_lib.Store(sys.argv[1], {{"seed": 0}}, {{"train": 10, "val": 2, "test": 2, "hash": "a"}})
os._exit(0)  # killed right after the digest was written: it is in the WAL only
"""


def test_a_digest_left_in_the_log_of_a_killed_run_is_still_checked(tmp_path):
  """A record made before digests were kept gets one on its next run; killed then, the
  digest is in the write-ahead log alone, and a resume on other data is still refused."""
  from metaqnn import store as store_lib
  work = str(tmp_path / "w")
  store_lib.Store(work, {"seed": 0}).close()  # as made before digests were kept
  script = tmp_path / "kill.py"
  script.write_text(LEGACY_KILL.format(root=ROOT))
  subprocess.run([sys.executable, str(script), work], check=True, timeout=60)
  assert os.path.exists(os.path.join(work, "metaqnn.db-wal"))
  other = {"train": 11, "val": 2, "test": 2, "hash": "b"}
  with pytest.raises(store_lib.WorkdirError, match=r"10 train, 2 val, 2 test examples then"):
    store_lib.Store(work, {"seed": 0}, other)
  assert not os.path.exists(os.path.join(work, store_lib.LOCK_FILE))  # released at once
  same = store_lib.Store(work, {"seed": 0}, {"train": 10, "val": 2, "test": 2, "hash": "a"})
  same.close()


@pytest.mark.parametrize("value", ["null", "[1, 2]", "\"x\"", "{bad"])
def test_an_unreadable_data_digest_is_one_line(tmp_path, value):
  import sqlite3
  from metaqnn import store as store_lib
  work = str(tmp_path / "w")
  store_lib.Store(work, {"seed": 0}, {"train": 1, "val": 1, "test": 1, "hash": "a"}).close()
  db = sqlite3.connect(os.path.join(work, "metaqnn.db"))
  db.execute("UPDATE meta SET value = ? WHERE key = 'data'", (value,))
  db.commit()
  db.close()
  with pytest.raises(store_lib.WorkdirError, match="data digest recorded in .* is unreadable"):
    store_lib.Store(work, {"seed": 0}, {"train": 1, "val": 1, "test": 1, "hash": "a"})


def test_a_split_class_spelt_in_another_unicode_form_is_named(tmp_path):
  """test/café written decomposed (by macOS or a zip file) beside train/café: said so."""
  import unicodedata
  from PIL import Image
  for split, name in (("train", "café"), ("train", "tea"), ("test", "tea"),
                      ("test", unicodedata.normalize("NFD", "café"))):
    os.makedirs(tmp_path / "d" / split / name, exist_ok=True)
    for i in range(6):
      Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(
          tmp_path / "d" / split / name / f"{i}.png")
  with pytest.raises(ip.DatasetError, match="spells with other Unicode characters") as e:
    ip.load(_config(f"folder:{tmp_path / 'd'}"))
  assert "\n" not in str(e.value)

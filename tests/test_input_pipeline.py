"""Tests of metaqnn.input_pipeline: digits, splits, normalize, and the tfds path (mocked)."""

import functools
import sys

import numpy as np
import pytest

from metaqnn import config_lib
from metaqnn import input_pipeline as ip


def _config(name="digits", **dataset):
  c = config_lib.base_config(name)
  if name == "digits":
    c.dataset.val_fraction = 0.2
  c.dataset.update(dataset)
  return c


@pytest.fixture(scope="module")
def digits():
  return ip.load(_config())


def _proportions(labels, k):
  return np.bincount(labels, minlength=k) / len(labels)


def _rows(x):
  """Set of image byte strings, to check that splits do not share examples."""
  return {r.tobytes() for r in x.reshape(len(x), -1)}


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_dtypes_ranges(digits):
  assert digits.name == "digits" and digits.num_classes == 10 and digits.preprocess == "mean"
  for x, y in [(digits.train_images, digits.train_labels), (digits.val_images, digits.val_labels),
               (digits.test_images, digits.test_labels)]:
    assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 1)
    assert y.dtype == np.int32 and y.shape == (len(x),)
    assert set(np.unique(y)) == set(range(10))
  assert digits.train_images.max() == 255 and digits.train_images.min() == 0
  assert digits.mean.dtype == np.float32 and digits.mean.shape == (1,)
  np.testing.assert_allclose(digits.mean, digits.train_images.mean() / 255.0, rtol=1e-5)


def test_digits_split_sizes(digits):
  n_test = round(1797 * ip.TEST_FRACTION)
  assert len(digits.test_labels) == n_test
  n_trainval = 1797 - n_test
  assert len(digits.val_labels) == round(0.2 * n_trainval)
  assert len(digits.train_labels) + len(digits.val_labels) == n_trainval


def test_stratified(digits):
  ref = _proportions(digits.train_labels, 10)
  assert np.abs(_proportions(digits.val_labels, 10) - ref).max() < 0.01
  assert np.abs(_proportions(digits.test_labels, 10) - ref).max() < 0.01


def test_no_overlap(digits):
  # Digits has a few duplicate images; compare indices via a fresh split instead of pixels.
  labels = np.repeat(np.arange(5), [30, 20, 10, 25, 15])
  taken, rest = ip.stratified_split(labels, 17, np.random.default_rng(0))
  assert len(taken) == 17 and len(rest) == 100 - 17
  assert not set(taken) & set(rest) and set(taken) | set(rest) == set(range(100))
  # And on digits: (almost) no shared images; duplicates in the raw set are rare.
  tr, va, te = _rows(digits.train_images), _rows(digits.val_images), _rows(digits.test_images)
  assert len(tr & va) <= 2 and len(tr & te) <= 2 and len(va & te) <= 2
  assert len(digits.train_labels) + len(digits.val_labels) + len(digits.test_labels) == 1797


def test_stratified_split_exact_counts():
  labels = np.repeat(np.arange(3), [50, 30, 20])
  taken, _ = ip.stratified_split(labels, 10, np.random.default_rng(1))
  np.testing.assert_array_equal(np.bincount(labels[taken]), [5, 3, 2])


def test_seed_determinism(digits):
  again = ip.load(_config())
  np.testing.assert_array_equal(again.val_labels, digits.val_labels)
  np.testing.assert_array_equal(again.val_images, digits.val_images)
  np.testing.assert_array_equal(again.train_images, digits.train_images)
  other = ip.load(_seed(1))
  assert not np.array_equal(other.val_images, digits.val_images)
  # The digits test split is fixed, whatever the seed.
  np.testing.assert_array_equal(other.test_images, digits.test_images)


def _seed(seed):
  c = _config()
  c.seed = seed
  return c


def test_train_fraction(digits):
  d = ip.load(_config(train_fraction=0.1))
  assert len(d.train_labels) == round(0.1 * len(digits.train_labels))
  np.testing.assert_array_equal(d.val_images, digits.val_images)  # Validation unchanged.
  assert _rows(d.train_images) <= _rows(digits.train_images)
  assert np.abs(_proportions(d.train_labels, 10) - _proportions(digits.train_labels, 10)).max() < 0.02


def test_final_split(digits):
  f = ip.load(_config(), final=True)
  assert len(f.train_labels) == len(digits.train_labels) + len(digits.val_labels)
  assert f.val_images.shape == (0, 8, 8, 1) and f.val_labels.shape == (0,)
  assert f.val_images.dtype == np.uint8 and f.val_labels.dtype == np.int32
  np.testing.assert_array_equal(f.test_images, digits.test_images)


def test_both_splits_from_one_read_are_the_two_loads():
  import dataclasses
  config = _config(train_fraction=0.5)
  for got, want in zip(ip.load_both(config), (ip.load(config), ip.load(config, final=True))):
    for field in dataclasses.fields(want):
      a, b = getattr(got, field.name), getattr(want, field.name)
      if isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b)
      else:
        assert a == b, field.name


def test_val_size_used_when_no_fraction():
  d = ip.load(_config(val_fraction=0.0, val_size=300))
  assert len(d.val_labels) == 300


@pytest.mark.parametrize("overrides", [
    dict(val_fraction=0.0, val_size=5000),   # >= train size
    dict(val_fraction=0.0, val_size=0),
    dict(val_fraction=1.0),
    dict(val_fraction=-0.1),
    dict(train_fraction=0.0),
    dict(train_fraction=1.5),
    dict(preprocess="zca"),
])
def test_bad_values(overrides):
  with pytest.raises(ip.DatasetError) as e:
    ip.load(_config(**overrides))
  assert "\n" not in str(e.value)


def test_unknown_name_lists_known():
  c = _config()
  c.dataset.name = "imagenet"
  with pytest.raises(ip.DatasetError, match="cifar10.*svhn"):
    ip.load(c)


# --- normalize --------------------------------------------------------------------------------


def test_normalize_mean():
  x = np.array([[[[0, 255], [51, 102]]]], np.uint8)  # [1, 1, 2, 2]: one row, two pixels, C=2.
  mean = np.array([0.1, 0.5], np.float32)
  out = np.asarray(ip.normalize(x, "mean", mean))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[[-0.1, 0.5], [0.1, -0.1]]]], atol=1e-6)


def test_normalize_gcn():
  # 8 values (2x2x2), four 0 and four 255 -> 0 / 1: mean .5, std .5 (> floor 1/sqrt(8)) -> -1 / +1.
  x = np.array([0, 255, 255, 0, 0, 0, 255, 255], np.uint8).reshape(1, 2, 2, 2)
  out = np.asarray(ip.normalize(x, "gcn", None))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out.ravel(), [-1, 1, 1, -1, -1, -1, 1, 1], rtol=1e-6)
  # Low contrast hits the floor: 0, 51, 102, 255 -> 0, .2, .4, 1 has mean .4 and std
  # sqrt(.14) = .374 < 1/sqrt(4) = .5, so it is divided by .5, not by its std.
  y = np.array([0, 51, 102, 255], np.uint8).reshape(1, 2, 2, 1)
  out = np.asarray(ip.normalize(y, "gcn", None))
  np.testing.assert_allclose(out.ravel(), [-0.8, -0.4, 0.0, 1.2], rtol=1e-5, atol=1e-6)
  # Per image: a second, flat image in the batch becomes zeros, not NaN, and the first is
  # unchanged by it.
  two = np.concatenate([y, np.full_like(y, 7)])
  out2 = np.asarray(ip.normalize(two, "gcn", None))
  np.testing.assert_allclose(out2[0], out[0], rtol=1e-6)
  np.testing.assert_array_equal(out2[1], 0.0)
  # Ignores `mean`.
  np.testing.assert_array_equal(np.asarray(ip.normalize(y, "gcn", np.array([0.9]))), out)


def test_normalize_under_jit(digits):
  import jax
  f = jax.jit(functools.partial(ip.normalize, preprocess="mean"))
  out = f(digits.train_images[:16], mean=digits.mean)
  np.testing.assert_allclose(
      out, digits.train_images[:16] / 255.0 - digits.mean, atol=1e-6)
  with pytest.raises(ValueError):
    ip.normalize(digits.train_images[:1], "zca", digits.mean)


def test_import_is_light():
  # tensorflow_datasets is only imported for tfds sets; TensorFlow never.
  assert "tensorflow" not in sys.modules


# --- tensorflow-datasets path -----------------------------------------------------------------


from tfds_mock import mock_source_cls as _mock_source_cls  # noqa: E402


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_data_source_mocked(name, shape, tmp_path):
  # mock_data (policy AUTO -> USE_CODE when no metadata is in data_dir) replaces
  # builder.as_data_source with random examples from the builder's features; it imports no
  # TensorFlow (only its tf.data mock of `as_dataset` would). Train and test yield the same
  # examples; labels are random in [0, num_classes).
  import tensorflow_datasets as tfds

  n = 600
  config = _config(name, data_dir=str(tmp_path), val_size=100)
  with tfds.testing.mock_data(num_examples=n,
                              mock_array_record_data_source=_mock_source_cls()()):
    d = ip.load(config)
  assert "tensorflow" not in sys.modules
  assert d.num_classes == 10
  assert d.train_images.dtype == np.uint8 and d.train_images.shape == (n - 100,) + shape
  assert d.val_images.shape == (100,) + shape and d.test_images.shape == (n,) + shape
  assert d.train_labels.dtype == np.int32 and d.train_labels.max() < 10
  assert d.mean.shape == (shape[-1],)
  ref = _proportions(d.train_labels, 10)
  assert np.abs(_proportions(d.val_labels, 10) - ref).max() < 0.02
  # Train + val is exactly the (mocked) train split, reordered.
  src = np.concatenate([d.train_labels, d.val_labels])
  np.testing.assert_array_equal(np.sort(src), np.sort(d.test_labels))


def test_svhn_final_training_adds_the_extra_split(tmp_path):
  import tensorflow_datasets as tfds
  config = _config("svhn", data_dir=str(tmp_path), val_size=50)
  config.dataset.final_extra = True
  with tfds.testing.mock_data(num_examples=200,
                              mock_array_record_data_source=_mock_source_cls()()):
    search = ip.load(config)
    final = ip.load(config, final=True)
  assert len(search.train_labels) + len(search.val_labels) == 200  # search: train only
  assert len(final.train_labels) == 400 and len(final.val_labels) == 0  # train + extra
  assert final.train_images.shape[1:] == (32, 32, 3)


def test_tfds_missing_data_gives_one_line(tmp_path):
  c = _config("mnist", data_dir=str(tmp_path), download=False)
  with pytest.raises(ip.DatasetError) as e:
    ip.load(c)
  msg = str(e.value)
  assert "\n" not in msg
  assert str(tmp_path) in msg and "tfds build mnist --file_format=array_record" in msg
  assert "BUILD.md" in msg and "--config.dataset.data_dir" in msg
  assert e.value.__cause__ is None and e.value.__context__ is None  # No traceback wall.
  assert list(tmp_path.iterdir()) == []  # Nothing written.


def test_tfds_tfrecord_data_gives_one_line(tmp_path):
  # Metadata of a TFRecord-prepared mnist (what `tfds build` writes by default), no shards.
  import tensorflow_datasets as tfds
  b = tfds.builder("mnist", data_dir=str(tmp_path), file_format="tfrecord")
  b.data_path.mkdir(parents=True)
  b.info.write_to_directory(b.data_dir)
  with pytest.raises(ip.DatasetError, match="prepared as tfrecord, not array_record") as e:
    ip.load(_config("mnist", data_dir=str(tmp_path)))
  assert "\n" not in str(e.value) and "convert_format" in str(e.value)


def test_tfds_download_failure_gives_one_line(tmp_path, monkeypatch):
  # What tfds raises offline after its retries (minutes; not waited for here).
  import requests
  import tensorflow_datasets as tfds

  def offline(*args, **kwargs):
    raise requests.exceptions.ConnectionError("Max retries exceeded\nwith url: ...")

  monkeypatch.setattr(tfds, "data_source", offline)
  with pytest.raises(ip.DatasetError, match="downloading svhn_cropped failed") as e:
    ip.load(_config("svhn", data_dir=str(tmp_path), download=True))
  assert "\n" not in str(e.value) and "tfds build svhn_cropped" in str(e.value)


def test_tfds_other_errors_are_not_hidden(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  def bug(*args, **kwargs):
    raise RuntimeError("a real bug")

  monkeypatch.setattr(tfds, "data_source", bug)
  with pytest.raises(RuntimeError, match="a real bug"):
    ip.load(_config("cifar10", data_dir=str(tmp_path)))

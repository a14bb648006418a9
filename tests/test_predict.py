"""Classifying new images with a final model: the model as trained, from files and arrays."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from metaqnn import finalize
from metaqnn import input_pipeline
from metaqnn import predict
from metaqnn.architecture import parse
from metaqnn import search
from test_finalize import digits_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, home=None):
  env = dict(os.environ, PYTHONPATH=ROOT, **({"HOME": str(home)} if home else {}))
  return subprocess.run([sys.executable, "-m", "metaqnn.predict", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory):
  """A final model of a search on a folder of images whose classes have names; the
  folder's test/ split is the digits test images."""
  from PIL import Image
  root = tmp_path_factory.mktemp("data")
  config = digits_config()
  data = input_pipeline.load(config, final=True)
  names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
  for split, x, y in (("train", data.train_images, data.train_labels),
                      ("test", data.test_images, data.test_labels)):
    for i, (img, label) in enumerate(zip(x, y)):
      d = root / "digits" / split / names[label]
      d.mkdir(parents=True, exist_ok=True)
      Image.fromarray(img[..., 0]).save(d / f"{i}.png")
  config.dataset.name = f"folder:{root / 'digits'}"
  config.dataset.image_size = config.dataset.channels = config.dataset.num_classes = 0
  workdir = str(root / "w")
  search.run_search(config, workdir, log_interval=1e9, tensorboard=False)
  results = finalize.finalize(workdir, top=1, ensemble=0)
  return results["models"][0], root / "digits" / "test", sorted(names)


def test_a_final_model_gives_the_probabilities_it_was_tested_with(folder_model, tmp_path):
  meta, test_folder, names = folder_model
  model = predict.load(os.path.dirname(meta["checkpoint"]))  # the model's folder
  assert model.class_names == names  # label order: the class folders sorted
  stored = np.load(os.path.join(os.path.dirname(meta["checkpoint"]), "test_probs.npy"))
  files, images = predict.read_images(str(test_folder), model.input_shape)
  assert len(files) == len(stored)
  probs = model.predict(images, batch_size=50)  # batches padded to one shape
  # The files are read in their own order (by class folder, then name): match by file.
  config = digits_config()
  config.dataset.name = f"folder:{test_folder.parent}"
  data = input_pipeline.load(config, final=True)
  truth = np.array([names.index(os.path.dirname(f)) for f in files])
  result = predict.classify(model, files, images)
  assert result["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == truth)))
  assert result["accuracy"] == pytest.approx(meta["test_accuracy"])
  assert sorted(np.round(probs.max(1), 5)) == sorted(np.round(stored.max(1), 5))
  assert len(data.test_labels) == len(files)
  # A model saved before the normalisation was kept takes it from its data.
  old = tmp_path / "old"
  shutil.copytree(os.path.dirname(meta["checkpoint"]), old)
  kept = json.loads((old / "meta.json").read_text())
  del kept["normalization"], kept["class_names"]
  (old / "meta.json").write_text(json.dumps(kept))
  before = predict.load(str(old))
  np.testing.assert_allclose(before.mean, model.mean)
  np.testing.assert_allclose(before.predict(images), probs, atol=1e-6)
  assert before.class_names == names


def test_the_command_reads_files_folders_and_arrays(folder_model, tmp_path):
  meta, test_folder, names = folder_model
  model = os.path.dirname(meta["checkpoint"])
  out = _run(f"--model={model}", f"--images={test_folder}", "--top=2", "--json")
  assert out.returncode == 0, out.stderr
  result = json.loads(out.stdout)
  assert result["images"] == len(result["predictions"]) > 0
  assert result["accuracy"] == pytest.approx(meta["test_accuracy"])
  first = result["predictions"][0]
  assert len(first["top"]) == 2 and first["top"][0]["class"] in names
  assert first["top"][0]["probability"] >= first["top"][1]["probability"]
  # ~ in --model= and --images= (the shell leaves it alone after "=").
  os.symlink(model, tmp_path / "m")
  os.symlink(test_folder, tmp_path / "t")
  home = _run("--model=~/m", "--images=~/t", "--top=2", "--json", home=tmp_path)
  assert home.returncode == 0 and json.loads(home.stdout) == result, home.stderr
  one = test_folder / first["image"]
  text = _run(f"--model={model}", f"--images={one}")
  assert text.returncode == 0 and text.stdout.startswith(
      f"{one.name}  {first['top'][0]['class']} ("), text.stdout
  # The same images as arrays, and larger ones, resized to the model's side.
  m = predict.load(model)
  _, images = predict.read_images(str(test_folder), m.input_shape)
  np.savez(tmp_path / "x.npz", x=images[:, :, :, 0])
  big = np.kron(images[:, :, :, 0], np.ones((2, 2), np.uint8))  # 16x16
  np.savez(tmp_path / "big.npz", x=big)
  arrays = json.loads(_run(f"--model={model}", f"--images={tmp_path / 'x.npz'}",
                           "--json").stdout)
  assert [p["top"] for p in arrays["predictions"]] == [p["top"] for p in
                                                       json.loads(_run(
                                                           f"--model={model}",
                                                           f"--images={test_folder}",
                                                           "--json").stdout)["predictions"]]
  assert "accuracy" not in arrays  # arrays carry no labels
  resized = predict.read_images(str(tmp_path / "big.npz"), m.input_shape)[1]
  assert resized.shape == images.shape
  # A folder read as the search reads one: hidden files and folders skipped, linked class
  # folders followed; the accuracy on the images in class folders only.
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  some = sorted(os.listdir(test_folder))[:2]
  for name in some:
    os.symlink(test_folder / name, mixed / name)
  (mixed / ".thumbs").mkdir()
  shutil.copy(one, mixed / ".thumbs" / "t.png")
  shutil.copy(one, mixed / "loose.png")
  shutil.copy(one, mixed / ".hidden.png")
  got = json.loads(_run(f"--model={model}", f"--images={mixed}", "--json").stdout)
  in_classes = sum(len(os.listdir(test_folder / n)) for n in some)
  assert got["images"] == in_classes + 1 and got["labelled"] == in_classes
  assert "loose.png" in [p["image"] for p in got["predictions"]]
  assert f"on the {in_classes} of {in_classes + 1} images" in _run(
      f"--model={model}", f"--images={mixed}").stdout


def test_classes_by_name_or_by_index(folder_model, tmp_path):
  """The built-in sets name their classes; folders named by class index are scored too
  (where no class has that name)."""
  from metaqnn import config_lib
  assert input_pipeline.class_names(config_lib.base_config("digits")) == [
      str(k) for k in range(10)]
  assert input_pipeline.class_names(config_lib.base_config("cifar10"))[:2] == [
      "airplane", "automobile"]
  cifar100 = input_pipeline.class_names(config_lib.base_config("cifar100"))
  assert len(set(cifar100)) == 100 and cifar100 == sorted(cifar100)  # the fine labels' order
  assert cifar100[:2] == ["apple", "aquarium_fish"] and cifar100[-1] == "worm"
  tfds_set = config_lib.base_config("tfds:fashion_mnist")
  tfds_set.dataset.data_dir = str(tmp_path / "tfds")  # nothing prepared: info only
  assert input_pipeline.class_names(tfds_set)[:2] == ["T-shirt/top", "Trouser"]
  meta, test_folder, names = folder_model
  model = predict.load(os.path.dirname(meta["checkpoint"]))
  for k in (2, 5):
    shutil.copytree(test_folder / names[k], tmp_path / "by_index" / str(k))
  files, images = predict.read_images(str(tmp_path / "by_index"), model.input_shape)
  result = predict.classify(model, files, images)
  truth = [int(os.path.dirname(f)) for f in files]
  assert result["labelled"] == len(files) and result["accuracy"] == pytest.approx(
      np.mean(model.predict(images).argmax(1) == truth))


@pytest.mark.parametrize("args,says", [
    (["--images={data}"], "usage"),
    (["--model={model}", "--images=/no/such/path"], "No such file"),
    (["--model=/no/such/model", "--images={data}"], "/no/such/model: No such file"),
    (["--model={data}", "--images={data}"], "not a metaqnn checkpoint"),
    (["--model={model}", "--images={rgb}"], "this model takes uint8 [N, H, W, 1]"),
    (["--model={model}", "--images={empty}"], "holds no image files"),
    (["--model={model}", "--images={data}", "--top=0"], "--top must be >= 1"),
    (["--model={model}", "--images={nothing}"], "holds nothing; put the images under x"),
    (["--model={model}", "--images={two}"], "holds a, b; put the images under x"),
    (["--model={model}", "--images={none}"], "N, H and W >= 1"),
    (["--model={model}", "--images={flat}"], "N, H and W >= 1"),  # no pixels: nothing to see
    (["--model={model}", "--images={objects}"], "holds object arrays"),
    (["--model={model}", "--images={beside}"], "this model takes uint8 [N, H, W, 1]"),
    (["--model={search}", "--images={data}"], "is a search's work directory"),
    (["--model={damaged}", "--images={data}"], "damaged/meta.json is damaged (JSONDecodeError"),
    (["--model={listed}", "--images={data}"], "listed/meta.json is not a final model's meta"),
    (["--model={other}", "--images={data}"], "does not hold the parameters of its meta.json's "
     "architecture [C(8,3,1), SM(10)]"),
    (["--model={bare}", "--images={data}"], "no checkpoint at "),
    (["--model={texts}", "--images={data}"], "texts/meta.json is not a final model's meta"),
    (["--model={names}", "--images={data}"], "names/meta.json is not a final model's meta.json "
     "(its class_names are not one name per class"),
    (["--model={norm}", "--images={data}"], "(its normalization is invalid)"),
])
def test_bad_input_is_one_line(folder_model, tmp_path, args, says):
  meta, test_folder, _ = folder_model
  np.savez(tmp_path / "rgb.npz", x=np.zeros((2, 8, 8, 3), np.uint8))
  np.savez(tmp_path / "nothing.npz")
  np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.zeros(2))
  np.savez(tmp_path / "none.npz", x=np.zeros((0, 8, 8, 1), np.uint8))
  np.savez(tmp_path / "flat.npz", x=np.zeros((2, 0, 0, 1), np.uint8))
  np.savez(tmp_path / "objects.npz", x=np.array([[1], [2, 3]], dtype=object))
  np.savez(tmp_path / "beside.npz", x=np.zeros((2, 8, 8, 3), np.uint8),  # x only is read
           notes=np.array([[1], [2, 3]], dtype=object))
  (tmp_path / "empty").mkdir()
  (tmp_path / "damaged" / "checkpoint").mkdir(parents=True)
  (tmp_path / "damaged" / "meta.json").write_text("{bad")
  model = os.path.dirname(meta["checkpoint"])
  for name in ("listed", "other", "bare", "texts", "names", "norm"):  # valid JSON, not the model
    shutil.copytree(model, tmp_path / name)
  (tmp_path / "listed" / "meta.json").write_text("[1, 2]")
  saved = json.loads((tmp_path / "other" / "meta.json").read_text())
  (tmp_path / "other" / "meta.json").write_text(json.dumps(dict(saved, arch="[C(8,3,1), SM(10)]")))
  shutil.rmtree(tmp_path / "bare" / "checkpoint")
  (tmp_path / "texts" / "meta.json").write_text(json.dumps(dict(saved, input_shape=["8", "8",
                                                                                   "1"])))
  (tmp_path / "names" / "meta.json").write_text(json.dumps(dict(saved, class_names=["a", "b"])))
  (tmp_path / "norm" / "meta.json").write_text(json.dumps(dict(saved, normalization=dict(
      saved["normalization"], mean=[0.5, 0.5]))))  # a mean for 2 channels, on grey images
  fill = dict(model=model, data=test_folder, rgb=tmp_path / "rgb.npz",
              empty=tmp_path / "empty", nothing=tmp_path / "nothing.npz",
              two=tmp_path / "two.npz", none=tmp_path / "none.npz",
              flat=tmp_path / "flat.npz", objects=tmp_path / "objects.npz",
              beside=tmp_path / "beside.npz",
              search=os.path.dirname(os.path.dirname(model)), damaged=tmp_path / "damaged",
              listed=tmp_path / "listed", other=tmp_path / "other", bare=tmp_path / "bare",
              texts=tmp_path / "texts", names=tmp_path / "names", norm=tmp_path / "norm")
  out = _run(*[a.format(**fill) for a in args])
  assert out.returncode == 2 and out.stdout == "", out.stdout
  assert len(out.stderr.splitlines()) == 1 and says in out.stderr, out.stderr


def test_class_folders_match_in_any_unicode_form():
  """macOS and zip files write "café" decomposed (e + a combining accent): the same class."""
  import unicodedata
  model = predict.FinalModel(arch=parse("[C(4,3,1), SM(2)]"), params=None,
                             input_shape=(8, 8, 1), preprocess="mean",
                             mean=np.zeros(1, np.float32), class_names=["café", "thé"])
  names = [unicodedata.normalize("NFD", "café/1.png"), "thé/2.png"]
  probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
  model.predict = lambda images: probs
  out = predict.classify(model, names, np.zeros((2, 8, 8, 1), np.uint8))
  assert out["labelled"] == 2 and out["accuracy"] == 1.0


def test_a_path_that_is_no_model_is_a_user_error_in_python(tmp_path):
  """As the command says it in one line: a UserError (a ValueError), not an OSError."""
  from metaqnn.errors import UserError
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="empty is not a metaqnn checkpoint"):
    predict.load(str(tmp_path / "empty"))

"""Classifies new images with a final model (the final stage's or transfer's): what a
search found, put to use.

  python -m metaqnn.predict --model=DIR/final/<hash> --images=PATH [--top=3] [--json]

`--model`: a final model's folder, or the `checkpoint` folder in it. `--images`: one
image file, a folder of image files (subfolders included), or an .npz whose images are
`x` (or `x_test`, or its only array). Images are read with the model's channels (grey,
RGB) and resized to its side when theirs differs, as `dataset.resize` does. Each image
gets its top classes and their probabilities, named as the data names them (a folder's
class folders, the built-in and tfds sets' names), else by index. Images in folders
named after the model's classes (PATH/<class>/..., or PATH/<index>/...) also give the
accuracy on them. Hidden files and folders are skipped, as in the search.

In Python: `model = predict.load(path)`, then `model.predict(images)`: class
probabilities [N, classes] of uint8 images [N, H, W, C] of the model's shape. It computes
in float32: a model tested in bfloat16 on a GPU (final.dtype) gives probabilities a little
different from its test_probs.npy.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np

from metaqnn.architecture import Architecture
from metaqnn.errors import UserError


@dataclasses.dataclass
class FinalModel:
  """A trained network and what it needs to read images as its training did."""
  arch: Architecture
  params: Any
  input_shape: tuple[int, int, int]
  preprocess: str
  mean: np.ndarray  # float32 [C]: the training data's per-channel mean, in [0, 1]
  class_names: Optional[list[str]] = None
  _fn: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

  def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities [N, classes] of uint8 `images` [N, H, W, C] (or grey
    [N, H, W]) of the model's shape, in batches of `batch_size` (one compiled program)."""
    import jax
    x = np.asarray(images)
    if x.ndim == 3 and self.input_shape[-1] == 1:
      x = x[..., None]
    if x.dtype != np.uint8 or x.shape[1:] != tuple(self.input_shape):
      raise UserError(f"images must be uint8 of shape [N, {', '.join(map(str, self.input_shape))}]"
                      f" for this model; got {x.dtype} {list(x.shape)} (read files with "
                      "`read_images`, which converts and resizes them)")
    if self._fn is None:
      self._fn = jax.jit(self._probabilities)
    batch = max(1, min(int(batch_size), len(x)))
    out = []
    for start in range(0, len(x), batch):
      part = x[start:start + batch]
      padded = np.concatenate([part, np.zeros((batch - len(part),) + part.shape[1:],
                                              np.uint8)])  # one shape: one compile
      out.append(np.asarray(self._fn(self.params, padded))[:len(part)])
    k = self.arch.num_classes
    return np.concatenate(out) if out else np.zeros((0, k), np.float32)

  def _probabilities(self, params, images):
    import jax
    from metaqnn import input_pipeline, models
    model = models.CNN(self.arch, dropout=False,
                       conv=models.conv_impl(jax.default_backend()))
    x = input_pipeline.normalize(images, self.preprocess, self.mean)
    return jax.nn.softmax(model.apply({"params": params}, x, train=False))

  def name(self, k: int) -> str:
    return self.class_names[k] if self.class_names else str(k)


def load(path: str) -> FinalModel:
  """The final model saved at `path` (its folder, or the checkpoint in it). A model saved
  before its normalisation was kept takes it from its data, as its training did."""
  from metaqnn import checkpoints
  from metaqnn.architecture import parse
  path = os.path.expanduser(path)
  if not os.path.exists(path):  # not "no meta.json beside it": nothing is there
    raise FileNotFoundError(2, "No such file or directory", path)
  path = checkpoints.checkpoint_dir(path)
  meta, params = checkpoints.load(path)
  norm, names = meta.get("normalization"), meta.get("class_names")
  if norm is None:  # saved before models kept these: from the data, as training had them
    import ml_collections
    from metaqnn import input_pipeline
    config = ml_collections.ConfigDict(meta["config"])
    try:
      data = input_pipeline.load(config, final=True)
    except input_pipeline.DatasetError as e:
      raise UserError(f"this model was saved before final models kept their "
                      f"normalisation, which is read from its data; {e}") from None
    norm = {"preprocess": data.preprocess, "mean": data.mean.tolist()}
    names = input_pipeline.class_names(config)
  return FinalModel(arch=parse(meta["arch"]), params=params,
                    input_shape=tuple(int(n) for n in meta["input_shape"]),
                    preprocess=str(norm["preprocess"]),
                    mean=np.asarray(norm["mean"], np.float32), class_names=names)


def read_images(path: str, shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray]:
  """(names, uint8 [N, *shape]) of the images at `path`: an image file, a folder of them
  (names relative to it, sorted), or an .npz (names `x[i]`)."""
  from metaqnn import sources
  side, channels = int(shape[0]), int(shape[-1])
  path = os.path.expanduser(path)
  if path.lower().endswith(".npz") and os.path.isfile(path):
    return _npz_images(path, side, channels)
  if os.path.isfile(path):
    return [os.path.basename(path)], _image(path, side, channels)[None]
  if not os.path.isdir(path):
    raise FileNotFoundError(2, "No such file or directory", path)
  names = []
  # As the search reads folders: hidden files and folders skipped, linked ones followed.
  for root, dirs, files in os.walk(path, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    names += [os.path.relpath(os.path.join(root, f), path) for f in files
              if f.lower().endswith(sources.IMAGE_EXTENSIONS) and not f.startswith(".")]
  names.sort()
  if not names:
    raise UserError(f"{path} holds no image files "
                    f"({', '.join(sources.IMAGE_EXTENSIONS)})")
  return names, np.stack([_image(os.path.join(path, n), side, channels) for n in names])


def _image(file: str, side: int, channels: int) -> np.ndarray:
  from metaqnn import sources
  mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
  if mode is None:
    raise UserError(f"this model takes {channels} channels; image files are read as 1, 3 "
                    "or 4; give an .npz of arrays instead")
  arr = sources.read_image(file, mode, "--images")
  return sources.resize_all(arr[None], side)[0]


def _npz_images(path: str, side: int, channels: int) -> tuple[list[str], np.ndarray]:
  from metaqnn import sources
  def images_key(names: list[str]) -> list[str]:  # only it is read
    return ([k for k in ("x", "x_test") if k in names] or
            (names if len(names) == 1 else []))[:1]

  files, arrays = sources.read_npz(path, path, "x=images", images_key)
  keys = list(arrays)
  if not keys:
    raise UserError(f"{path} holds {', '.join(files) or 'nothing'}; put the images under x "
                    "(np.savez(PATH, x=images))")
  x = arrays[keys[0]]
  x = x[..., None] if x.ndim == 3 else x
  if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != channels or not len(x)
      or 0 in x.shape[1:]):
    raise UserError(f"{path}: {keys[0]} is {x.dtype} {list(x.shape)}; this model takes "
                    f"uint8 [N, H, W, {channels}], N, H and W >= 1")
  return [f"{keys[0]}[{i}]" for i in range(len(x))], sources.resize_all(x, side)


def classify(model: FinalModel, names: list[str], images: np.ndarray, top: int = 1) -> dict:
  """Each image's `top` classes with their probabilities; with the accuracy on the images
  that lie in a folder named after one of the model's classes (or its index)."""
  probs = model.predict(images)
  order = np.argsort(-probs, axis=1, kind="stable")[:, :max(1, min(top, probs.shape[1]))]
  out = {"model": str(model.arch), "images": len(names),
         "predictions": [{"image": n, "top": [{"class": model.name(int(k)),
                                               "probability": float(p[k])} for k in ks]}
                         for n, p, ks in zip(names, probs, order)]}
  from metaqnn.sources import unicode_form  # names compared in one Unicode form
  folders = [unicode_form(os.path.basename(os.path.dirname(n))) for n in names]  # "": none
  # A folder names a class by its name, or by its index where no class has that name.
  label = {str(k): k for k in range(probs.shape[1])}
  label.update({unicode_form(model.name(k)): k for k in range(probs.shape[1])})
  labelled = [i for i, f in enumerate(folders) if f in label]
  if labelled:
    truth = np.array([label[folders[i]] for i in labelled])
    out["accuracy"] = float(np.mean(probs[labelled].argmax(1) == truth))
    out["labelled"] = len(labelled)
  return out


def render(result: dict) -> str:
  lines = [f"{p['image']}  " + ", ".join(f"{t['class']} ({t['probability']:.3f})"
                                         for t in p["top"]) for p in result["predictions"]]
  if "accuracy" in result:
    lines.append(f"accuracy {result['accuracy']:.4f} on the {result['labelled']} of "
                 f"{result['images']} images in a folder named after a class")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  from absl import flags
  from metaqnn import cli
  f = flags.FLAGS
  if len(argv) > 1 or not f.model or not f.images:
    raise cli.UserError("usage: python -m metaqnn.predict --model=DIR/final/<hash> "
                        "--images=FILE|FOLDER|FILE.npz [--top=K] [--json]")
  if f.top < 1:
    raise cli.UserError(f"--top must be >= 1, got {f.top}")
  model = load(f.model)
  names, images = read_images(f.images, model.input_shape)
  result = classify(model, names, images, f.top)
  print(json.dumps(result) if f.json else render(result))


if __name__ == "__main__":
  from absl import flags
  from metaqnn import cli
  flags.DEFINE_string("model", None, "A final model's folder (or its checkpoint).")
  flags.DEFINE_string("images", None, "An image file, a folder of them, or an .npz (x, "
                      "x_test or its only array).")
  flags.DEFINE_integer("top", 1, "Classes shown per image.")
  flags.DEFINE_bool("json", False, "One JSON object instead of lines.")
  cli.run(main)

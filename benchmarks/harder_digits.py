"""Writes "harder digits": a data set no test or tuning used, for acceptance runs of your
own data, budgets and early stopping (BENCHMARKS.md) without a network.

  .venv/bin/python benchmarks/harder_digits.py --out=/tmp/hd

scikit-learn's digits at 16x16 (bilinear), each rotated by up to 25 degrees, shifted by up
to 2 px, dimmed to 50-100% contrast, with Gaussian noise (sigma 0.18) and, on half of them,
a sine grating behind: 2,200 grey images (drawn with replacement from the 1,797), 10
classes, 1,800 train and 400 test. Written as OUT/harder_digits.npz (x_train, y_train,
x_test, y_test; uint8) and as OUT/folder/{train,test}/<class name>/*.png, the same images,
so `--config=configs/custom.py:npz:OUT/harder_digits.npz` and
`--config=configs/custom.py:folder:OUT/folder` search the same task. Fixed seed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_digits

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def make(seed: int = 12345, count: int = 2200) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [count, 16, 16], labels uint8 [count])."""
  rng = np.random.default_rng(seed)
  digits = load_digits()
  images, labels = [], []
  for i in rng.choice(len(digits.images), count, replace=True):
    im = ndimage.zoom(digits.images[i] / 16.0, 2, order=1)
    im = ndimage.rotate(im, rng.uniform(-25, 25), reshape=False, order=1)
    im = ndimage.shift(im, rng.uniform(-2, 2, size=2), order=1)
    im = im * rng.uniform(0.5, 1.0) + rng.normal(0, 0.18, im.shape)
    if rng.random() < 0.5:  # a grating of random orientation and frequency behind
      yy, xx = np.mgrid[:16, :16]
      angle = rng.uniform(0, np.pi)
      im += 0.15 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(0.5, 1.5))
    images.append((np.clip(im, 0, 1) * 255).astype(np.uint8))
    labels.append(digits.target[i])
  return np.stack(images), np.array(labels, dtype=np.uint8)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder to write the data set into")
  out = parser.parse_args().out
  x, y = make()
  test = 400
  os.makedirs(out, exist_ok=True)
  np.savez(os.path.join(out, "harder_digits.npz"), x_train=x[test:], y_train=y[test:],
           x_test=x[:test], y_test=y[:test])
  for split, part in (("train", slice(test, None)), ("test", slice(0, test))):
    for k, (im, label) in enumerate(zip(x[part], y[part])):
      folder = os.path.join(out, "folder", split, NAMES[label])
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(im, "L").save(os.path.join(folder, f"{split}_{k:05d}.png"))
  print(f"{len(x)} images of 16x16, classes {np.bincount(y).tolist()}: "
        f"{os.path.join(out, 'harder_digits.npz')} and {os.path.join(out, 'folder')}")


if __name__ == "__main__":
  main()

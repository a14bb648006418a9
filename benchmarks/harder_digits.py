"""Writes "harder digits": a data set no test or tuning used, for acceptance runs of your
own data, budgets and early stopping (BENCHMARKS.md) without a network.

  .venv/bin/python benchmarks/harder_digits.py --out=/tmp/hd

scikit-learn's digits at 16x16 (bilinear), each rotated by up to 25 degrees, shifted by up
to 2 px, dimmed to 50-100% contrast, with Gaussian noise (sigma 0.18) and, on half of them,
a sine grating behind: 2,200 grey images, 10 classes. The 1,797 source digits are first
split into disjoint train, validation and test sources, so that no augmented copy of a
training digit is validated or tested on; each split then draws its images from its own
sources: 1,400 train, 400 validation, 400 test. Written as OUT/harder_digits.npz (x_train,
y_train, x_val, y_val, x_test, y_test; uint8) and as OUT/folder/{train,validation,test}/
<class name>/*.png, the same images, so `--config=configs/custom.py:npz:OUT/harder_digits.npz`
and `--config=configs/custom.py:folder:OUT/folder` search the same task. Fixed seed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.datasets import load_digits

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# (split, source digits, images drawn from them)
SPLITS = (("train", 1197, 1400), ("val", 300, 400), ("test", 300, 400))


def augment(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One 16x16 uint8 image of an 8x8 digit (values 0..16)."""
  im = ndimage.zoom(digit / 16.0, 2, order=1)
  im = ndimage.rotate(im, rng.uniform(-25, 25), reshape=False, order=1)
  im = ndimage.shift(im, rng.uniform(-2, 2, size=2), order=1)
  im = im * rng.uniform(0.5, 1.0) + rng.normal(0, 0.18, im.shape)
  if rng.random() < 0.5:  # a grating of random orientation and frequency behind
    yy, xx = np.mgrid[:16, :16]
    angle = rng.uniform(0, np.pi)
    im += 0.15 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(0.5, 1.5))
  return (np.clip(im, 0, 1) * 255).astype(np.uint8)


def make(seed: int = 12345) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """{split: (images uint8 [n, 16, 16], labels uint8 [n], the source digit of each)}, the
  splits drawn from disjoint source digits."""
  rng = np.random.default_rng(seed)
  digits = load_digits()
  order = rng.permutation(len(digits.images))
  out, start = {}, 0
  for split, sources, count in SPLITS:
    pool = order[start:start + sources]
    start += sources
    picks = rng.choice(pool, count, replace=True)
    out[split] = (np.stack([augment(digits.images[i], rng) for i in picks]),
                  digits.target[picks].astype(np.uint8), picks)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder to write the data set into")
  out = parser.parse_args().out
  splits = {split: (x, y) for split, (x, y, _) in make().items()}
  os.makedirs(out, exist_ok=True)
  np.savez(os.path.join(out, "harder_digits.npz"),
           **{f"{a}_{split}": xy[i] for split, xy in splits.items()
              for i, a in enumerate("xy")})
  for split, (x, y) in splits.items():
    for k, (im, label) in enumerate(zip(x, y)):
      folder = os.path.join(out, "folder", "validation" if split == "val" else split,
                            NAMES[label])
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(im, "L").save(os.path.join(folder, f"{split}_{k:05d}.png"))
  total = sum(len(y) for _, y in splits.values())
  print(f"{total} images of 16x16 ({', '.join(f'{s} {len(y)}' for s, (_, y) in splits.items())}"
        f"): {os.path.join(out, 'harder_digits.npz')} and {os.path.join(out, 'folder')}")

if __name__ == "__main__":
  main()

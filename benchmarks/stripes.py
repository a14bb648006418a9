"""Writes "stripes": a third small RGB data set no test or tuning used, for acceptance
runs of your own data, budgets and early stopping (BENCHMARKS.md) without a network.

  .venv/bin/python benchmarks/stripes.py --out=/tmp/stripes

Four classes of sinusoidal stripes by orientation (0, 45, 90 and 135 degrees, each
jittered by 7), of random frequency, phase and colour pair, under heavy pixel noise
(sigma 55): 800 training and 200 test images of 20x20 RGB. Written as OUT/stripes.npz
(x_train, y_train, x_test, y_test; uint8) and as OUT/stripes_folder/{train,test}/<class>/
*.png, a third of them resized to 24x24, so that the folder needs
`--config.dataset.resize=True --config.dataset.image_size=20`. Fixed seed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

CLASSES = ("h0", "d45", "v90", "d135")


def make(rng: np.random.Generator, n: int, side: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """n images with balanced labels (class i % 4 for the i-th drawn), in random order."""
  yy, xx = np.mgrid[0:side, 0:side].astype(float)
  images = []
  for i in range(n):
    angle = np.deg2rad((i % len(CLASSES)) * 45 + rng.normal(0, 7))
    freq, phase = rng.uniform(0.6, 0.9), rng.uniform(0, 2 * np.pi)
    t = (np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)[..., None] + 1) / 2
    fg = rng.uniform(0, 255, 3)
    bg = 255 - fg + rng.normal(0, 20, 3)
    noisy = t * fg + (1 - t) * bg + rng.normal(0, 55, (side, side, 3))
    images.append(np.clip(noisy, 0, 255).astype(np.uint8))
  order = rng.permutation(n)
  return np.stack(images)[order], (np.arange(n) % len(CLASSES)).astype(np.int64)[order]


def write(out: str, seed: int = 12345) -> None:
  rng = np.random.default_rng(seed)
  x_train, y_train = make(rng, 800)
  x_test, y_test = make(rng, 200)
  os.makedirs(out, exist_ok=True)
  np.savez(os.path.join(out, "stripes.npz"), x_train=x_train, y_train=y_train,
           x_test=x_test, y_test=y_test)
  for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
    folder = os.path.join(out, "stripes_folder", split)
    for name in CLASSES:
      os.makedirs(os.path.join(folder, name), exist_ok=True)
    for i, (image, label) in enumerate(zip(x, y)):
      pil = Image.fromarray(image)
      if i % 3 == 0:
        pil = pil.resize((24, 24), Image.BILINEAR)
      pil.save(os.path.join(folder, CLASSES[label], f"{i:04d}.png"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="Folder to write the data set into.")
  args = parser.parse_args()
  write(args.out)
  print(f"wrote {args.out}/stripes.npz and {args.out}/stripes_folder")


if __name__ == "__main__":
  main()

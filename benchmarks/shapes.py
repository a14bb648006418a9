"""Writes "shapes": a small RGB data set no test or tuning used, for acceptance runs of
your own data, budgets and early stopping (BENCHMARKS.md) without a network.

  .venv/bin/python benchmarks/shapes.py --out=/tmp/shapes

Five classes of filled or outlined shapes (circle, square, triangle, cross, ring) in a
random colour, size and position, on a random dark background with pixel noise, drawn
at 4x and downsampled: 1,000 training and 300 test images of 20x20 RGB. Written as
OUT/shapes.npz (x_train, y_train, x_test, y_test; uint8) and as OUT/shapes_folder/<class>/
*.png: the training images again, a third of them redrawn at 24x24 and a third at 18x18,
so that the folder needs `--config.dataset.resize=True --config.dataset.image_size=20`.
Fixed seed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "ring")
FOLDER_SIDES = (20, 24, 18)  # the folder's images, in turn


def draw(rng: np.random.Generator, label: int, side: int = 20, scale: int = 4) -> np.ndarray:
  """One [side, side, 3] uint8 image of the shape `label`."""
  big = side * scale
  background = tuple(int(v) for v in rng.integers(0, 120, size=3))
  img = Image.new("RGB", (big, big), background)
  pen = ImageDraw.Draw(img)
  colour = tuple(int(v) for v in rng.integers(100, 256, size=3))
  r = rng.uniform(0.22, 0.38) * big
  cx, cy = rng.uniform(r + 1, big - r - 1), rng.uniform(r + 1, big - r - 1)
  box = [cx - r, cy - r, cx + r, cy + r]
  width = max(2, int(r * 0.35))
  name = CLASSES[label]
  if name == "circle":
    pen.ellipse(box, fill=colour)
  elif name == "square":
    pen.rectangle(box, fill=colour)
  elif name == "triangle":
    pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
  elif name == "cross":
    pen.rectangle([cx - width / 2, cy - r, cx + width / 2, cy + r], fill=colour)
    pen.rectangle([cx - r, cy - width / 2, cx + r, cy + width / 2], fill=colour)
  else:  # ring
    pen.ellipse(box, outline=colour, width=width)
  small = np.asarray(img.resize((side, side), Image.BILINEAR)).astype(np.int16)
  return np.clip(small + rng.integers(-25, 26, size=(side, side, 3)), 0, 255).astype(np.uint8)


def make(rng: np.random.Generator, n: int, side: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """n images with balanced labels in random order."""
  labels = np.arange(n) % len(CLASSES)
  rng.shuffle(labels)
  return np.stack([draw(rng, int(c), side) for c in labels]), labels.astype(np.int64)


def write(out: str, seed: int = 12345) -> None:
  rng = np.random.default_rng(seed)
  x_train, y_train = make(rng, 1000)
  x_test, y_test = make(rng, 300)
  os.makedirs(out, exist_ok=True)
  np.savez(os.path.join(out, "shapes.npz"), x_train=x_train, y_train=y_train,
           x_test=x_test, y_test=y_test)
  folder = os.path.join(out, "shapes_folder")
  for name in CLASSES:
    os.makedirs(os.path.join(folder, name), exist_ok=True)
  for i, label in enumerate(y_train):
    side = FOLDER_SIDES[i % len(FOLDER_SIDES)]
    image = x_train[i] if side == 20 else draw(rng, int(label), side)
    Image.fromarray(image).save(os.path.join(folder, CLASSES[label], f"{i:05d}.png"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="Folder to write the data set into.")
  args = parser.parse_args()
  write(args.out)
  print(f"wrote {args.out}/shapes.npz and {args.out}/shapes_folder")


if __name__ == "__main__":
  main()

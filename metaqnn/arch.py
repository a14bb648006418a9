"""Inspect an architecture: parameters, shapes and FLOPs of its network, as one JSON object.

  python -m metaqnn.arch params "[C(64,3,1), P(2,2), FC(128), SM(10)]" \\
      --input_shape=32,32,3 --num_classes=10

Bad input gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import json

from absl import flags
from metaqnn.errors import UserError

_INPUT_SHAPE = flags.DEFINE_list("input_shape", ["32", "32", "3"],
                                 "Height, width and channels of one input image.")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Classes of the data set; if set, SM(k) must have k equal to it.")

COMMANDS = ("params",)


def describe(text: str, input_shape: tuple[int, ...], num_classes: int | None = None) -> dict:
  """The JSON summary of architecture `text` on `input_shape` (see the module docstring)."""
  from metaqnn import models  # Imports JAX: only when there is work to do.
  from metaqnn.architecture import ArchitectureError, parse

  arch = parse(text)
  if num_classes is not None and arch.num_classes != num_classes:
    raise ArchitectureError(
        f"{arch} ends in SM({arch.num_classes}) but --num_classes={num_classes}")
  layers = models.layer_summary(arch, input_shape)
  params = models.tree_size(models.param_shapes(models.CNN(arch), input_shape))
  return dict(arch=str(arch), input_shape=list(input_shape), params=params,
              output_shape=list(layers[-1].output_shape),
              flops=sum(l.flops for l in layers), layers=[l.to_json() for l in layers])


def _input_shape(values: list[str]) -> tuple[int, ...]:
  try:
    shape = tuple(int(v) for v in values)
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) < 1 or max(shape) > 2**31 - 1:  # (XLA's sizes)
    raise UserError(f"--input_shape must be three positive integers H,W,C (each at most "
                    f"{2**31 - 1:,}), got {','.join(values)!r}")
  return shape


def main(argv: list[str]) -> None:
  if len(argv) != 3 or argv[1] not in COMMANDS:
    raise UserError(f"usage: python -m metaqnn.arch {'|'.join(COMMANDS)} "
                    "\"<architecture>\" [--input_shape=H,W,C] [--num_classes=K]")
  print(json.dumps(describe(argv[2], _input_shape(_INPUT_SHAPE.value), _NUM_CLASSES.value)))


if __name__ == "__main__":
  from metaqnn import cli
  cli.run(main)

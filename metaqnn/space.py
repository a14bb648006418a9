"""Look at the search space from the command line.

  python -m metaqnn.space stats --config=configs/cifar10.py
  python -m metaqnn.space sample --config=configs/cifar10.py --num=2000 --seed=0
  python -m metaqnn.space sample --config=configs/cifar10.py --num=2000 --uniform

`stats` prints one JSON object (state and state-action counts, counts per layer type and
depth, the exact number of distinct architectures). `sample` prints architectures in the
paper's notation, one per line, from uniform random walks (epsilon 1) with true sizes
tracked; the same seed gives the same output. With `--uniform`, every architecture of the
space is equally likely instead (the walks favour short networks, since a termination is
one of a handful of choices at every step). With a custom data set (`configs/custom.py`)
the data is read first, for its image side, channels and classes.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import flags
from ml_collections import config_flags

from metaqnn import agent as agent_lib
from metaqnn import cli
from metaqnn import input_pipeline
from metaqnn import search_space

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_NUM = flags.DEFINE_integer("num", 10, "sample: number of architectures.")
_SEED = flags.DEFINE_integer("seed", None, "sample: random seed (default: config.seed).",
                             lower_bound=0)
_EPSILON = flags.DEFINE_float("epsilon", 1.0, "sample: epsilon (1 = uniform random walks).")
_UNIFORM = flags.DEFINE_bool("uniform", False,
                             "sample: draw uniformly from all architectures, not by walks.")

COMMANDS = ("stats", "sample")


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise cli.UserError(f"usage: python -m metaqnn.space {{{'|'.join(COMMANDS)}}} "
                        "--config=configs/<name>.py [--num=N --seed=S --uniform]")
  if _CONFIG.value is None:
    raise cli.UserError("--config is required, e.g. --config=configs/cifar10.py")
  # The size bins follow the image side: a custom data set (npz:, folder:, tfds:) is read
  # for its shape, as a search does at its start.
  input_pipeline.resolve(_CONFIG.value)
  space = search_space.from_config(_CONFIG.value)
  if argv[1] == "stats":
    print(json.dumps(space.stats()))
    return
  if _NUM.value < 0:
    raise cli.UserError("--num must be >= 0")
  seed = _CONFIG.value.seed if _SEED.value is None else _SEED.value
  if int(seed) < 0:  # NumPy's generators take non-negative seeds only
    raise cli.UserError(f"seed must be >= 0, got {seed}")
  if _UNIFORM.value:
    if flags.FLAGS["epsilon"].present:
      raise cli.UserError("--uniform draws from the whole space; it takes no --epsilon")
    rng = np.random.default_rng(seed)
    draw = lambda: space.uniform_path(rng)
  else:
    agent = agent_lib.Agent(space, seed=seed)
    draw = lambda: agent.sample(_EPSILON.value)
  out = sys.stdout
  for _ in range(_NUM.value):
    out.write(str(draw().architecture) + "\n")


if __name__ == "__main__":
  cli.run(main)

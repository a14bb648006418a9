"""Look at the search space from the command line.

  python -m metaqnn.space stats --config=configs/cifar10.py
  python -m metaqnn.space sample --config=configs/cifar10.py --num=2000 --seed=0
  python -m metaqnn.space sample --config=configs/cifar10.py --num=2000 --uniform
  python -m metaqnn.space costs --config=configs/digits.py --uniform

`stats` prints one JSON object (state and state-action counts, counts per layer type and
depth, the exact number of distinct architectures). `sample` prints architectures in the
paper's notation, one per line, from uniform random walks (epsilon 1) with true sizes
tracked; the same seed gives the same output. With `--uniform`, every architecture of the
space is equally likely instead (the walks favour short networks, since a termination is
one of a handful of choices at every step). With a custom data set (`configs/custom.py`)
the data is read first, for its image side, channels and classes.

With a budget (`--config.budget.max_params=N`, `max_flops`), `stats` also counts the
architectures within it (exactly, up to 100,000), and `sample`'s walks take only actions
that the search's pruning allows (with `budget.prune=False`, as the search's, they are
not pruned); `--uniform` draws from the whole space and takes no budget.

`--workdir=DIR` (instead of `--config`) looks at a search's space with its agent: `sample`
and `costs` walk with the Q-values it has learned so far, at `--epsilon` (0: its greedy
choice at every step), e.g. `python -m metaqnn.space sample --workdir=DIR --epsilon=0
--num=1`. Without it the agent is untrained, every Q-value equal, so walks at any
epsilon are uniform random walks: `--epsilon` below 1 needs `--workdir`.

`costs` helps to choose a budget: the percentiles (0, 10, 20, ..., 100) of the params and
FLOPs of `--num` samples (default 2,000), drawn as `sample` draws them, as one JSON
object. "The 20th percentile of the space's uniform samples" is `params["20"]` with
`--uniform`; without it, of the agent's epsilon-1 walks, which favour short networks.
"""

from __future__ import annotations

import json
import sys
from typing import Callable, Sequence

import numpy as np
from absl import flags
from ml_collections import config_flags

from metaqnn import agent as agent_lib
from metaqnn import budget as budget_lib
from metaqnn import cli
from metaqnn import input_pipeline
from metaqnn import search_space

COMMANDS = ("stats", "sample", "costs")
PERCENTILES = tuple(range(0, 101, 10))
_COSTS_NUM = 2000  # samples of `costs` unless --num says otherwise
_COUNT_UP_TO = 100_000  # architectures within a budget counted exactly (more: "at least")


def _check_flags(command: str) -> None:
  """Refuses flags that contradict each other or `command`, in one line."""
  if _WORKDIR.value is not None and not _WORKDIR.value.strip():
    raise cli.UserError("--workdir is empty; give a search's work directory")
  if (_CONFIG.value is None) == (_WORKDIR.value is None):
    raise cli.UserError("give --config (e.g. --config=configs/cifar10.py) or --workdir (a "
                        "search's), one of them")
  if not 0 <= _EPSILON.value <= 1:  # (NaN fails too)
    raise cli.UserError(f"--epsilon must be in [0, 1] (1: uniform random walks, 0: the "
                        f"agent's greedy choice), got {_EPSILON.value}")
  if command == "stats" and any(flags.FLAGS[f].present
                                for f in ("epsilon", "uniform", "num", "seed")):
    raise cli.UserError("stats counts the space; it takes no --epsilon, --uniform, --num "
                        "or --seed")
  if _EPSILON.value < 1 and _WORKDIR.value is None:
    raise cli.UserError("--epsilon below 1 needs --workdir=DIR, a search's agent: an "
                        "untrained agent values every action alike, so its walks are "
                        "random at any epsilon")


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise cli.UserError(f"usage: python -m metaqnn.space {{{'|'.join(COMMANDS)}}} "
                        "--config=configs/<name>.py [--num=N --seed=S --uniform] "
                        "(or --workdir=DIR [--epsilon=E] instead of --config)")
  _check_flags(argv[1])
  agent = None
  if _WORKDIR.value is not None:
    from metaqnn import search  # pylint: disable=import-outside-toplevel
    config, agent = search.load_agent(_WORKDIR.value)
  else:
    config = _CONFIG.value
    # The size bins follow the image side: a custom data set (npz:, folder:, tfds:) is
    # read for its shape, as a search does at its start.
    input_pipeline.resolve(config)
  space = search_space.from_config(config)
  budget = budget_lib.Budget.from_config(config)
  budget_lib.check_space(space, config)  # as the search: something must fit
  if argv[1] == "stats":
    stats = space.stats()
    if budget.hard:
      pruner = budget_lib.Pruner(space, int(config.dataset.channels), budget)
      found = pruner.count_within(_COUNT_UP_TO + 1)
      stats["within_budget"] = min(found, _COUNT_UP_TO)
      stats["within_budget_exact"] = found <= _COUNT_UP_TO
    print(json.dumps(stats))
    return
  num = _COSTS_NUM if argv[1] == "costs" and not flags.FLAGS["num"].present else _NUM.value
  least = 1 if argv[1] == "costs" else 0  # no percentile of no samples
  if num < least:
    raise cli.UserError(f"--num must be >= {least}")
  seed = config.seed if _SEED.value is None else _SEED.value
  if int(seed) < 0:  # NumPy's generators take non-negative seeds only
    raise cli.UserError(f"seed must be >= 0, got {seed}")
  if _UNIFORM.value:
    if flags.FLAGS["epsilon"].present:
      raise cli.UserError("--uniform draws from the whole space; it takes no --epsilon")
    if budget.hard:
      raise cli.UserError(
          "--uniform draws from the whole space; it takes no budget" if agent is None else
          f"--uniform draws from the whole space, and {_WORKDIR.value}'s search has a budget;"
          " leave --uniform out to walk its agent" + (" (within the budget)" if budget.prune
                                                      else ""))
  draw = sampler(space, config, int(seed), _UNIFORM.value, _EPSILON.value, agent)
  if argv[1] == "costs":
    walks = "the search's agent's walks" if agent is not None else "walks"
    print(json.dumps(cost_percentiles(draw, budget_lib.input_shape(config), num)
                     | {"sampling": "uniform" if _UNIFORM.value else
                        f"{walks} at epsilon {_EPSILON.value:g}"}))
    return
  out = sys.stdout
  for _ in range(num):
    out.write(str(draw().architecture) + "\n")


def sampler(space: search_space.SearchSpace, config, seed: int, uniform: bool = False,
            epsilon: float = 1.0, agent: agent_lib.Agent | None = None
            ) -> Callable[[], search_space.Path]:
  """Draws paths: uniformly from all the space's architectures, or the walks at `epsilon`
  of `agent`, pruned as the search's are: a search's agent (`search.load_agent`) by its
  own stored budget, else an untrained one by `config`'s. `seed` seeds the draws either
  way (it replaces the agent's generator)."""
  if uniform:
    rng = np.random.default_rng(seed)
    return lambda: space.uniform_path(rng)
  if agent is None:
    agent = agent_lib.Agent(space)
    agent.pruner = budget_lib.pruner_for(space, config)  # None with prune off or no budget
  agent.rng = np.random.default_rng(seed)
  return lambda: agent.sample(epsilon)


def cost_percentiles(draw: Callable[[], search_space.Path], shape: Sequence[int],
                     num: int) -> dict:
  """The percentiles (`PERCENTILES`) of the params and FLOPs of `num` drawn paths."""
  if num < 1:
    raise cli.UserError(f"the percentiles need at least one sample, not {num}")
  costs = np.array([budget_lib.cost(draw().architecture, shape) for _ in range(num)])
  table = lambda values: {str(q): int(np.percentile(values, q)) for q in PERCENTILES}
  return {"samples": num, "params": table(costs[:, 0]), "flops": table(costs[:, 1])}


if __name__ == "__main__":  # flags only for the command, so the library imports cleanly
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
  _NUM = flags.DEFINE_integer("num", 10, "sample: number of architectures; costs: number of "
                              "samples (default there: 2,000).")
  _SEED = flags.DEFINE_integer("seed", None, "sample: random seed (default: config.seed).",
                               lower_bound=0)
  _EPSILON = flags.DEFINE_float("epsilon", 1.0, "sample, costs: epsilon of the walks (1 = "
                                "uniform random walks; below 1 with --workdir).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "A search's work directory, instead of "
                                 "--config: its space, and walks with its agent's Q-values.")
  _UNIFORM = flags.DEFINE_bool("uniform", False,
                               "sample: draw uniformly from all architectures, not by walks.")
  cli.run(main)

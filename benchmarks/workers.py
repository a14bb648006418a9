"""Models per hour with 1, 2 and 4 workers on one machine, and the distribution overhead.

  python benchmarks/workers.py [--models=16] [--epochs=2]

Part 1 trains real digits candidates (the `train` evaluator) with `num_workers` = 1, 2, 4
local workers (threads: one candidate's compile overlaps another's training) and prints
models per hour for each, and the speed-up over one worker.
Part 2 measures what the distribution layer itself costs per model, with an evaluator
that does no work: the serial loop, local threads, and Ray actors (if Ray is installed).
Part 3 trains real digits candidates with one worker, in this process (the local
executor) and in one Ray actor on this machine (`--config.executor=ray`, no address: the
isolation that lets a crashing candidate cost only itself), and prints seconds per model
for each; the Ray figure includes starting the actor and loading the data set in it.
`--parts=2,3` runs only those parts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from configs import digits  # noqa: E402
from metaqnn import search  # noqa: E402

_MODELS = flags.DEFINE_integer("models", 16, "Unique models per run in part 1.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs per candidate in part 1.")
_OVERHEAD_MODELS = flags.DEFINE_integer("overhead_models", 300, "Models per run in part 2.")
_ISOLATION_MODELS = flags.DEFINE_integer("isolation_models", 12, "Models per run in part 3.")
_PARTS = flags.DEFINE_list("parts", ["1", "2", "3"], "Which parts to run.")


def timed_search(config, evaluate=None) -> tuple[float, int]:
  with tempfile.TemporaryDirectory() as d:
    start = time.perf_counter()
    result = search.run_search(config, os.path.join(d, "w"), evaluate=evaluate,
                               log_interval=1e9, tensorboard=False)
    return time.perf_counter() - start, result.unique_models


def no_work(arch) -> float:
  return 0.5


def start_ray() -> bool:
  """Starts a local Ray (not timed); False if Ray is not installed."""
  try:
    import ray
  except ImportError:
    print("(ray not installed: skipping the Ray rows)")
    return False
  os.environ.setdefault("RAY_AUTH_MODE", "disabled")
  if not ray.is_initialized():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  return True


def main(argv):
  del argv
  parts = set(_PARTS.value)
  if "1" in parts:
    part1()
  if "2" in parts:
    part2()
  if "3" in parts:
    part3()


def part3():
  n = _ISOLATION_MODELS.value
  print(f"\npart 3: digits, train evaluator, {n} unique models of {_EPOCHS.value} epochs, "
        "one worker: local executor vs one Ray actor on this machine (Ray's time includes "
        "starting the actor and loading the data in it)")
  print(f"{'executor':>18} {'seconds':>8} {'s/model':>8} {'load avg':>9}")
  runs = [("local", "local")] + ([("ray, 1 actor", "ray")] if start_ray() else [])
  for name, executor in runs:
    config = digits.get_config()
    config.search.schedule = f"1.0:{n}"
    config.train.epochs = _EPOCHS.value
    config.executor, config.num_workers = executor, 1
    seconds, unique = timed_search(config)
    load = os.getloadavg()[0]  # other work on the machine skews both rows
    print(f"{name:>18} {seconds:>8.1f} {seconds / unique:>8.2f} {load:>9.1f}")


def part1():
  print(f"part 1: digits, train evaluator, {_MODELS.value} unique models of "
        f"{_EPOCHS.value} epochs, epsilon 1.0")
  print(f"{'workers':>8} {'seconds':>8} {'models/hour':>12} {'speed-up':>9}")
  base = None
  for workers in (1, 2, 4):
    config = digits.get_config()
    config.search.schedule = f"1.0:{_MODELS.value}"
    config.train.epochs = _EPOCHS.value
    config.num_workers = workers
    seconds, n = timed_search(config)
    rate = n / seconds * 3600
    base = base or rate
    print(f"{workers:>8} {seconds:>8.1f} {rate:>12.0f} {rate / base:>8.2f}x")


def part2():
  n = _OVERHEAD_MODELS.value
  print(f"\npart 2: distribution overhead, {n} models, an evaluator that does no work")
  print(f"{'executor':>18} {'ms/model':>9}")
  runs = [("serial", "local", 1), ("threads, 2", "local", 2)]
  if start_ray():  # not timed
    runs.append(("ray actors, 2", "ray", 2))
  for name, executor, workers in runs:
    config = digits.get_config()
    config.search.schedule = f"1.0:{n}"
    config.executor, config.num_workers = executor, workers
    seconds, unique = timed_search(config, evaluate=no_work)
    print(f"{name:>18} {seconds / unique * 1e3:>9.2f}")


if __name__ == "__main__":
  app.run(main)

"""Measures the agent's own cost: enumeration, one agent step, and the search overhead.

  python benchmarks/agent_step.py

Prints a table: time to enumerate each paper space; one agent step (sample an
architecture, then 100 replay updates) at epsilon 1.0 and 0.1; and the paper's whole
2,700-model schedule with the synthetic evaluator (record, agent, snapshots included),
as total seconds and overhead per model; then the same with a parameter budget (max_params
at the 20th percentile of uniform samples; pruned sampler, exact count at the start, and
the cost check of every sample), and with a FLOP budget without pruning.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metaqnn import agent as agent_lib  # noqa: E402
from metaqnn import budget  # noqa: E402
from metaqnn import config_lib  # noqa: E402
from metaqnn import search  # noqa: E402
from metaqnn import search_space  # noqa: E402
from metaqnn import space as space_cmd  # noqa: E402

DEPTH = {"mnist": 12, "svhn": 12, "cifar10": 18}


def config_for(name):
  config = config_lib.base_config(name)
  config.space.max_depth = DEPTH[name]
  return config


def best_of(fn, repeats=5):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def agent_step_ms(config, epsilon, steps=200):
  agent = agent_lib.Agent.from_config(search_space.from_config(config), config)
  if agent.pruner is not None:
    agent.pruner.check_feasible()  # the start-up walk over the space, outside the timing
  for _ in range(100):  # a replay memory to sample from
    agent.learn(agent.sample(1.0).architecture, 0.5, new=True, replay_samples=100)
  t = time.perf_counter()
  for i in range(steps):
    path = agent.sample(epsilon)
    agent.learn(path.architecture, 0.3 + 0.001 * (i % 100), new=True, replay_samples=100)
  return (time.perf_counter() - t) / steps * 1e3


def main():
  rows = []
  for name in DEPTH:
    config = config_for(name)
    enum_s = best_of(lambda: search_space.from_config(config))
    rows.append((name, f"{enum_s * 1e3:.1f} ms", f"{agent_step_ms(config, 1.0):.2f} ms",
                 f"{agent_step_ms(config, 0.1):.2f} ms"))
  print(f"{'space':<8} {'enumerate':>10} {'step eps=1.0':>13} {'step eps=0.1':>13}")
  for r in rows:
    print(f"{r[0]:<8} {r[1]:>10} {r[2]:>13} {r[3]:>13}")

  config = config_for("cifar10")
  cap = percentile(config, 20)
  budgets = {"none": {}, f"max_params={cap:,}": dict(max_params=cap)}
  budgets[f"max_flops={percentile(config, 50, 1):,}, prune=False"] = dict(
      max_flops=percentile(config, 50, 1), prune=False)
  for name, limits in budgets.items():
    config = config_for("cifar10")
    config.budget.update(limits)
    if limits:
      bc = config_for("cifar10")
      bc.budget.update(limits)
      rows = [(f"{k}", f"{agent_step_ms(bc, e):.2f} ms") for k, e in (("1.0", 1.0), ("0.1", 0.1))]
      print(f"\nagent step with budget {name}: eps 1.0 {rows[0][1]}, eps 0.1 {rows[1][1]}")
    config.evaluator = "synthetic"
    with tempfile.TemporaryDirectory() as d:
      t = time.perf_counter()
      result = search.run_search(config, os.path.join(d, "w"), log_interval=1e9)
      total = time.perf_counter() - t
    print(f"\nfull paper schedule, synthetic evaluator, cifar10 space, 100 replay samples, "
          f"budget {name}:")
    print(f"  {result.unique_models} unique models, {result.iterations} iterations in "
          f"{total:.1f} s = {total / result.iterations * 1e3:.2f} ms overhead per model "
          "(agent, SQLite commit, snapshots, TensorBoard)")


def percentile(config, q, col=0, n=2000):
  """The q-th percentile (a multiple of 10) of params (col 0) or FLOPs (col 1) of n
  uniform random walks (`metaqnn.space costs`)."""
  draw = space_cmd.sampler(search_space.from_config(config), config, seed=0)
  costs = space_cmd.cost_percentiles(draw, budget.input_shape(config), n)
  return costs["flops" if col else "params"][str(q)]

if __name__ == "__main__":
  main()

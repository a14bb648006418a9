"""Budgets on digits: the targets of issue 11, measured.

  python benchmarks/budget_digits.py --schedule=1.0:20,0.5:5,0.1:5   # 20th percentile
  python benchmarks/budget_digits.py --q=40                            # digits schedule
  python benchmarks/budget_digits.py --q=40 --train --schedule=1.0:30,0.5:10,0.1:10

1. max_params = the q-th percentile (default 20) of the params of 2,000 uniform samples of
   the digits space (configs/digits.py), and how many architectures fit it (exact). The
   samples are the agent's epsilon-1 walks, or with --sampling=space architectures drawn
   uniformly from the whole space (the walks favour short networks: a much lower cap).
2. Share of over-budget samples per epsilon, without pruning (the agent must learn the
   wall from the over-budget reward 0) and with it; synthetic evaluator, the digits
   schedule. Any over-budget model trained is counted (it must be 0). Beside it, the
   share of 2,000 fresh walks of the final agent at epsilon 0.1 and 0 (greedy): the
   policy itself, without the search's quota of new models, which makes the last stages
   sample mostly what the agent has not tried yet. With --shares-train: real training
   (the digits protocol), without pruning only. --no-shares skips this part.
3. With --train: a real search on digits under the budget and an unconstrained one of the
   same schedule (seed 0, or --train-seed; --epochs and --lr-decay-every change the
   digits training protocol of both). Printed: the best of each, and the best
   in-budget model the unconstrained search happened to train (what filtering an
   unconstrained search by the budget afterwards would give).
4. With --pool=W1,W2,...: no search. The best model under the budget among every model
   the given digits searches trained, per seed (the seed draws the validation split, so
   accuracies are compared within a seed only): how far any in-budget model seen so far
   comes from the best overall, a ceiling that a budgeted search of the same training
   has not been shown to pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from configs import digits  # noqa: E402
from metaqnn import budget as budget_lib  # noqa: E402
from metaqnn.results import OVER_BUDGET  # noqa: E402
from metaqnn import search  # noqa: E402
from metaqnn import search_space  # noqa: E402
from metaqnn import space as space_cmd  # noqa: E402
from metaqnn import store as store_lib  # noqa: E402


def percentile_cap(config, q=20, n=2000, seed=0, sampling="walks") -> int:
  """The q-th percentile of the params of n samples: the agent's epsilon-1 walks, or
  architectures drawn uniformly from the whole space (`metaqnn.space costs`)."""
  draw = space_cmd.sampler(search_space.from_config(config), config, seed,
                           uniform=sampling != "walks")
  shape = budget_lib.input_shape(config)
  return int(np.percentile([budget_lib.cost(draw().architecture, shape)[0]
                            for _ in range(n)], q))

def records(workdir):
  store = store_lib.open_existing(workdir)
  try:
    return list(store.models())
  finally:
    store.close()


def share_by_epsilon(recs) -> dict:
  out = {}
  for r in recs:
    n, k = out.get(r.epsilon, (0, 0))
    out[r.epsilon] = (n + 1, k + (r.status == OVER_BUDGET))
  return {e: (k / n, n) for e, (n, k) in out.items()}


def policy_share(config, workdir, epsilon: float, n: int = 2000, seed: int = 123) -> float:
  """Over-budget share of n fresh walks of the search's final agent, at `epsilon`."""
  _, agent = search.load_agent(workdir)
  draw = space_cmd.sampler(agent.space, config, seed, epsilon=epsilon, agent=agent)
  shape = budget_lib.input_shape(config)
  return float(np.mean([budget_lib.cost(draw().architecture, shape)[0]
                        > config.budget.max_params for _ in range(n)]))


def pool_ceiling(workdirs, cap: int, epochs: int) -> None:
  """Prints, per seed, the best in-budget and the best overall of the given searches."""
  same = lambda c: json.dumps(c.space.to_dict(), sort_keys=True)  # tuples and lists alike
  space = same(digits.get_config())
  by_seed = {}
  for w in workdirs:
    try:
      store = store_lib.open_existing(w)
    except store_lib.WorkdirError as e:
      sys.exit(f"--pool: {e}")
    try:
      config, recs = store.config(), list(store.models())
    finally:
      store.close()
    if (config.dataset.name != "digits" or same(config) != space
        or int(config.train.epochs) != epochs):
      print(f"  skipped {w}: not a digits search of {epochs} epochs in the digits space")
      continue
    seed = by_seed.setdefault(int(config.seed), {"searches": 0, "models": {}})
    seed["searches"] += 1
    for r in recs:
      if r.status == "ok" and not r.resampled and r.best_val_accuracy is not None:
        best = seed["models"].get(r.arch, (0.0, r.params))[0]  # accuracy, not a scaled reward
        seed["models"][r.arch] = (max(best, r.best_val_accuracy), r.params)
  if not by_seed:
    sys.exit(f"--pool: none of the {len(workdirs)} work directories is a digits search of "
             f"{epochs} epochs in the digits space (--epochs sets the epochs)")
  for s, v in sorted(by_seed.items()):
    models = v["models"]
    line = (f"  seed {s}: {v['searches']} searches, {len(models)} distinct architectures "
            "fully trained")
    if models:
      overall = max(a for a, _ in models.values())
      fit = sorted(((a, arch) for arch, (a, p) in models.items() if p <= cap), reverse=True)
      line += f", best {overall:.4f}; {len(fit)} within budget"
      if fit:
        line += (f", best {fit[0][0]:.4f} ({100 * (overall - fit[0][0]):.2f} pp below) "
                 f"{fit[0][1]}")
    print(line)


def run(config, workdir, evaluate=None):
  t = time.perf_counter()
  search.run_search(config, workdir, evaluate=evaluate, log_interval=1e9, tensorboard=False)
  return records(workdir), time.perf_counter() - t


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--train", action="store_true", help="also the real-training runs")
  parser.add_argument("--schedule", default=None, help="schedule (default: digits')")
  parser.add_argument("--q", type=float, default=20, help="percentile of max_params")
  parser.add_argument("--sampling", choices=("walks", "space"), default="walks",
                      help="the samples of the percentile: the agent's epsilon-1 walks, or "
                           "architectures drawn uniformly from the space")
  parser.add_argument("--epochs", type=int, default=None, help="train.epochs of --train")
  parser.add_argument("--lr-decay-every", type=int, default=None,
                      help="train.lr_decay_every of --train (digits: 3)")
  parser.add_argument("--no-shares", action="store_true",
                      help="skip the over-budget shares (2.); with --train, only the searches")
  parser.add_argument("--shares-train", action="store_true",
                      help="the shares (2.) with real training instead of the synthetic "
                           "evaluator, without pruning only (with it they are 0), with "
                           "the digits protocol (--epochs and --lr-decay-every are --train's)")
  parser.add_argument("--seeds", default="0,1,2", help="seeds of the share measurement")
  parser.add_argument("--train-seed", type=int, default=0, help="seed of the --train runs")
  parser.add_argument("--workdirs", default=None,
                      help="keep the work directories of the --train runs here")
  parser.add_argument("--pool", default=None,
                      help="comma-separated digits work directories: print the best "
                           "in-budget model they trained, per seed, and nothing else")
  args = parser.parse_args()
  base = digits.get_config()
  if args.schedule:
    base.search.schedule = args.schedule
  cap = percentile_cap(base, args.q, sampling=args.sampling)
  space = search_space.from_config(base)
  fits = budget_lib.Pruner(space, 1, budget_lib.Budget(max_params=cap)).count_within(10**8)
  what = ("uniform random walks" if args.sampling == "walks"
          else "architectures drawn uniformly from the space")
  print(f"digits space: max_params = {cap:,} ({args.q:g}th percentile of 2,000 {what}); "
        f"{fits:,} of its {space.count_architectures():,} architectures fit it")
  if args.pool is not None:
    workdirs = args.pool.split(",")
    if not all(workdirs):
      sys.exit(f"--pool takes work directories separated by commas, got {args.pool!r}")
    pool_ceiling(workdirs, cap, args.epochs or int(base.train.epochs))
    return

  if not args.no_shares:
    print_shares(base, cap, args.seeds, args.shares_train)
  if args.train:
    train_runs(base, cap, args)


def print_shares(base, cap: int, seeds: str, train: bool = False) -> None:
  """2.: the over-budget share per epsilon, without pruning and with it (with `train`:
  real training, without pruning only)."""
  print(f"\nshare of over-budget samples, {'real training' if train else 'synthetic'} "
        f"evaluator, schedule {base.search.schedule}:")
  print(f"  {'prune':<6} {'seed':<5} " + " ".join(f"{'eps ' + format(e, 'g'):>9}"
                                                  for e in (1.0, 0.5, 0.1)) +
        "  (n 0.1)  trained over budget  iterations  final policy eps 0.1 / 0")
  for prune in (False,) if train else (False, True):
    for seed in map(int, seeds.split(",")):
      config = digits.get_config()
      config.search.schedule = base.search.schedule
      config.seed = seed
      config.evaluator = "train" if train else "synthetic"
      config.final.run_after_search = False
      config.budget.max_params = cap
      config.budget.prune = prune
      with tempfile.TemporaryDirectory() as d:
        recs, _ = run(config, os.path.join(d, "w"))
        policy = [policy_share(config, os.path.join(d, "w"), e) for e in (0.1, 0.0)]
      share = share_by_epsilon(recs)
      bad = sum(r.status == "ok" and r.params > cap for r in recs)
      cells = " ".join(f"{share.get(e, (float('nan'), 0))[0]:>9.1%}" for e in (1.0, 0.5, 0.1))
      cells += f" {'(' + str(share.get(0.1, (0, 0))[1]) + ')':>7}"  # samples at eps 0.1
      print(f"  {str(prune):<6} {seed:<5} {cells}  {bad:>19}  {len(recs):>10}  "
            f"{policy[0]:>12.1%} / {policy[1]:.1%}")


def train_runs(base, cap: int, args) -> None:
  """3.: a real search under the budget and an unconstrained one of the same schedule."""
  results = {}
  for name, budget in (("unconstrained", 0), ("max_params", cap)):
    config = digits.get_config()
    config.search.schedule = base.search.schedule
    config.final.run_after_search = False
    config.seed = args.train_seed
    if args.epochs:
      config.train.epochs = args.epochs
    if args.lr_decay_every:
      config.train.lr_decay_every = args.lr_decay_every
    config.budget.max_params = budget
    with tempfile.TemporaryDirectory() as d:
      recs, seconds = run(config, os.path.join(args.workdirs or d, name))
    trained = [r for r in recs if r.status == "ok" and not r.resampled]
    best = max(trained, key=lambda r: r.accuracy)
    results[name] = best
    print(f"\n{name}: {len(trained)} trained in {seconds:.0f} s; best val {best.accuracy:.4f} "
          f"({best.params:,} params, {best.flops:,} FLOPs) {best.arch}; "
          f"over budget trained: {sum(r.params > cap for r in trained) if budget else '-'}")
    if not budget:
      fit = [r for r in trained if r.params <= cap]
      results["filtered"] = max(fit, key=lambda r: r.accuracy, default=None)
      f = results["filtered"]
      print(f"  of its {len(trained)} models {len(fit)} fit the budget; the best of them: " +
            (f"{f.accuracy:.4f} ({f.params:,} params) {f.arch}" if f else "none"))
  budgeted = results["max_params"].accuracy
  print(f"\nbest in-budget is {100 * (results['unconstrained'].accuracy - budgeted):.2f} pp "
        "below the unconstrained best")
  if results["filtered"] is not None:
    print(f"and {100 * (budgeted - results['filtered'].accuracy):+.2f} pp against the best "
          "in-budget model of the unconstrained search")


if __name__ == "__main__":
  main()

"""The paper's analysis figures as PNG files, from one or several work directories.

  python -m metaqnn.plots --workdir=DIR                 # Figures 3, A4, A5 into DIR/plots
  python -m metaqnn.plots --workdir=D1,D2,D3 --out=OUT  # plus the stability plot (A3)

Figures 3, A4 and A3 plot the agent's rewards: the validation accuracies in the paper's
setting, labelled "reward" under a budget's objective, with over-budget samples or with
early stopping.
Figure 3: rolling mean accuracy against iteration, with the mean per epsilon stage.
Learning curves: the top models' validation accuracy per epoch, and all models' coloured by
epsilon (where the record holds curves).
Cost: validation accuracy of every fully trained model against its parameters and FLOPs,
the Pareto front (each model on it more accurate than every model at most as costly)
marked, and the budget's limits drawn.
Figure A4: accuracy distribution per epsilon. Figure A5: mean Q-value by layer type and
by convolution receptive field against layer depth. Figure A3: mean accuracy per epsilon
over several runs (seeds), with their spread, and each run's curve.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Sequence

import numpy as np
from absl import flags

from metaqnn import budget as budget_lib
from metaqnn import cli
from metaqnn import results
from metaqnn import search
from metaqnn import store as store_lib
from metaqnn.architecture import FC, GAP, Conv, Pool, Softmax


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt
  return plt


def load_run(workdir: str):
  """(config, records, agent) of a work directory; the agent brought up to the record."""
  with store_lib.open_existing(workdir) as store:
    config = store.config()
    records = list(store.models())
    agent = search.agent_of(workdir, store)
  return config, records, agent


def _by_epsilon(records) -> dict[float, list[float]]:
  """Accuracies of every sampled model (re-samples included: what the agent chose)
  grouped by the epsilon it was sampled under, in schedule order."""
  out = collections.OrderedDict()
  for r in records:
    out.setdefault(r.epsilon, []).append(r.accuracy)
  return out


def _what(config, records) -> str:
  """What Figures 3, A4 and A3 plot: the agent's rewards (`results.reward_kind`)."""
  return results.reward_kind(budget_lib.Budget.from_config(config).objective,
                             (r.status for r in records))


def _reward_rule(config, fingerprint: dict) -> dict:
  """What a run's rewards are, flat: its evaluator's ("train", "synthetic", or a user's
  "function", as recorded), shaped by its budget and its early stopping's rule; trained,
  the training and split that give its accuracies, as its record's fingerprint holds
  them (what a resume compares, and made comparable for records of earlier versions)."""
  stop = config.get("early_stop") or {}
  evaluator = fingerprint.get("evaluator", "train")
  rule = {"evaluator": evaluator,
          "budget": budget_lib.Budget.from_config(config).shaping(),
          "early_stop": ([stop.get("kind"), stop.get("reward")]
                         if stop.get("kind", "none") != "none" else None)}
  if evaluator == "train":
    for group, fields in fingerprint.get("training", {}).items():
      rule.update({f"{group}.{k}": v for k, v in fields.items()})
  return rule


def _short(name: str) -> str:
  """A data set's name for a title: your own data by its file or folder name, not its
  full recorded path."""
  kind, _, path = name.partition(":")
  base = os.path.basename(os.path.normpath(path))  # "" for the root folder
  return f"{kind}:{base}" if kind in ("npz", "folder") and base else name


def epsilon_runs(records) -> list[tuple[float, int, int, float]]:
  """(epsilon, first iteration, end, mean reward) of each run of consecutive samples
  under one epsilon, in iteration order. One per stage in a plain search; a schedule
  reshaped on a resume can come back to an epsilon, and with several workers results of
  two stages interleave where they meet: each run is drawn where it was."""
  runs = []
  for i, r in enumerate(records):
    if runs and runs[-1][0] == r.epsilon:
      runs[-1][2] = i + 1
      runs[-1][3].append(r.accuracy)
    else:
      runs.append([r.epsilon, i, i + 1, [r.accuracy]])
  return [(eps, start, end, float(np.mean(values))) for eps, start, end, values in runs]


def plot_rolling(records, path: str, title: str, what: str = "validation accuracy",
                 window: int = 100) -> None:
  """Figure 3: rolling mean of the rewards (`what`: validation accuracies in the paper's
  setting), and their mean over each run of one epsilon (`epsilon_runs`)."""
  plt = _pyplot()
  acc = np.array([r.accuracy for r in records])
  fig, ax = plt.subplots(figsize=(9, 4.5))
  runs = epsilon_runs(records)
  longest = collections.defaultdict(int)
  for eps, start, end, _ in runs:
    longest[eps] = max(longest[eps], end - start)
  labelled = set()  # each epsilon at its longest run, and every run of 5% or more
  for i, (eps, start, end, mean) in enumerate(runs):
    ax.bar((start + end) / 2, mean, width=end - start, color="tab:blue",
           alpha=0.15 + 0.1 * (i % 2), edgecolor="none",
           label=f"mean {what} per epsilon stage" if i == 0 else None)
    if end - start >= len(acc) / 20 or (eps not in labelled and end - start == longest[eps]):
      # in a band above the rewards (at most 1), where the rolling line never runs
      ax.text((start + end) / 2, 1.015, f"ε={eps:g}", ha="center", va="bottom", fontsize=8)
      labelled.add(eps)
  w = max(1, min(window, len(acc) // 5))  # the paper's 100, shorter for short searches
  rolling = np.convolve(acc, np.ones(w) / w, mode="valid")
  ax.plot(np.arange(w - 1, len(acc)), rolling, color="tab:blue",
          label=f"rolling mean over {w} samples")
  ax.set(xlabel="iteration", ylabel=what, title=title,
         xlim=(0, len(acc)), ylim=(min(0.0, acc.min()), 1.07))  # a penalty can be < 0
  ax.axhline(1.0, color="0.8", lw=0.6)
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_distribution(records, path: str, title: str,
                      what: str = "validation accuracy") -> None:
  """Figure A4: how the rewards (`what`) are distributed at each epsilon."""
  plt = _pyplot()
  groups = _by_epsilon(records)
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
  bins = np.linspace(min(0.0, min(min(v) for v in groups.values())), 1, 21)
  cmap = _epsilon_colours(plt)
  for eps, values in groups.items():
    hist, _ = np.histogram(values, bins=bins)
    ax.plot((bins[:-1] + bins[1:]) / 2, hist / max(len(values), 1),
            color=cmap(eps), label=f"ε={eps:g} ({len(values)} samples)")
  ax.set(xlabel=what, ylabel="fraction of samples (re-samples included)",
         title=f"{what} distribution per ε")
  ax.legend(fontsize=8)
  ends = [e for e in (max(groups), min(groups)) if e in groups]
  for eps in dict.fromkeys(ends):
    ax2.hist(groups[eps], bins=bins, alpha=0.6, density=True, color=cmap(eps),
             label=f"ε={eps:g}")
  ax2.set(xlabel=what, ylabel="density", title="first and last ε")
  ax2.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _epsilon_colours(plt):
  """Colours by epsilon in [0, 1], the same in every figure: viridis without its palest
  yellow (epsilon 1's curves are the most numerous, and must show on white)."""
  from matplotlib.colors import ListedColormap
  return ListedColormap(plt.get_cmap("viridis")(np.linspace(0, 0.85, 256)))


def q_by_depth(agent) -> tuple[dict, dict]:
  """Mean Q-value by layer type and by conv receptive field, keyed by layer depth."""
  space = agent.space
  types = collections.defaultdict(lambda: collections.defaultdict(list))
  fields = collections.defaultdict(lambda: collections.defaultdict(list))
  names = {Conv: "convolution", Pool: "pooling", FC: "fully connected",
           GAP: "global avg. pooling", Softmax: "softmax"}
  for s, state in enumerate(space.states):
    for a in space.allowed_ids[s]:
      action, q = space.actions[a], float(agent.q[s, a])
      types[names[type(action)]][state.depth + 1].append(q)
      if isinstance(action, Conv):
        fields[f"{action.kernel}x{action.kernel}"][state.depth + 1].append(q)
  mean = lambda d: {k: {depth: float(np.mean(v)) for depth, v in sorted(per.items())}
                    for k, per in d.items()}
  return mean(types), mean(fields)


def plot_q_values(agent, path: str, title: str) -> None:
  """Figure A5: mean Q-value against layer depth, by layer type and receptive field."""
  plt = _pyplot()
  types, fields = q_by_depth(agent)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
  for ax, data, what in ((axes[0], types, "layer type"), (axes[1], fields,
                                                            "receptive field (convolutions)")):
    for name, per_depth in data.items():
      ax.plot(list(per_depth), list(per_depth.values()), marker="o", label=name)
    ax.set(xlabel="layer depth", ylabel="mean Q-value", title=f"by {what}")
    if data:  # (a space without convolutions: that panel is empty)
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, "none in this space", ha="center", transform=ax.transAxes)
  allowed = np.isfinite(agent.q)
  untried = int(np.sum(agent.q[allowed] == agent.q_init))
  fig.suptitle(f"{title}\nmeans over every allowed action: {untried:,} of "
               f"{int(allowed.sum()):,} still at the initial Q-value {agent.q_init:g} "
               "(never updated)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# Curves cut short, by status: (line style, end marker, what the title says).
_CUT = {"stopped": ("--", "x", "stopped early: dashed, ending in x"),
        "timeout": (":", "+", "train.max_seconds: dotted, ending in +")}


def plot_curves(records, path: str, title: str, top: int = 10) -> bool:
  """Learning curves (validation accuracy per epoch, last attempt): the top models, and
  every trained model coloured by the epsilon it was sampled under. False if the record
  holds no curves (searches recorded before curves were kept)."""
  trained = [r for r in records if not r.resampled and r.curves]
  if not trained:
    return False
  plt = _pyplot()
  fig, (ax_top, ax_all) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  full = [r for r in trained if r.status == "ok"]  # not stopped: a predicted or partial accuracy
  rewarded = False  # ranked by a budget objective's rewards, not validation accuracies
  for r in sorted(full, key=results.rank_key)[:top]:
    acc = r.curves[-1]["val_accuracy"]
    val = r.accuracy if r.best_val_accuracy is None else r.best_val_accuracy
    label = f"#{r.iteration + 1} {val:.3f}"  # the sample number, as in the log
    if abs(val - r.accuracy) > 1e-9:
      label, rewarded = label + f" (reward {r.accuracy:.3f})", True
    ax_top.plot(range(1, len(acc) + 1), acc, marker=".", label=label)
  ax_top.set(title=f"top {min(top, len(full))} fully trained models"
             + (" by reward" if rewarded else ""), xlabel="epoch",
             ylabel="validation accuracy")
  if full:
    ax_top.legend(fontsize=7)
  cmap = _epsilon_colours(plt)
  ends = {status: [] for status in _CUT}  # where a curve was cut short, by what
  for r in trained:
    acc = r.curves[-1]["val_accuracy"]
    style = _CUT[r.status][0] if r.status in _CUT else "-"
    ax_all.plot(range(1, len(acc) + 1), acc, style, color=cmap(r.epsilon),
                alpha=0.35, lw=0.8, marker="." if len(acc) == 1 else None)  # else unseen
    if r.status in ends:  # a black mark where it stopped, over any colour
      ends[r.status].append((len(acc), acc[-1]))
  cut = []
  for status, (_, marker, what) in _CUT.items():
    if ends[status]:
      ax_all.scatter(*zip(*ends[status]), marker=marker, color="k", s=18, lw=0.8, zorder=3)
      cut.append(what)
  ax_all.set(title="all trained models" + (f" ({'; '.join(cut)})" if cut else ""),
             xlabel="epoch")
  from matplotlib.ticker import MaxNLocator
  for ax in (ax_top, ax_all):
    # epochs: 1, 2, ..., not 0.96 (one tick will do: a one-epoch search)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
  fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1)), ax=ax_all,
               label="ε")
  fig.suptitle(title)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return True
def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
  """Indices of the Pareto-optimal models, cheapest first: each is more accurate than
  every model at most as costly (ties: the cheaper one)."""
  order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i]))
  front, best = [], -np.inf
  for i in order:
    if accuracies[i] > best:
      front.append(i)
      best = accuracies[i]
  return front


def _costs(config, records):
  """(record, params, flops, validation accuracy) of the distinct trained models; costs
  computed for records made before they were stored. The accuracy, not the reward: a
  soft objective's reward already counts the cost, and its front would count it twice."""
  side, channels = int(config.dataset.image_size), int(config.dataset.get("channels", 0))
  out = []
  for r in records:
    if r.resampled or r.status != "ok":
      continue
    p, f = r.params, r.flops
    if (p is None or f is None) and channels:
      p, f = budget_lib.cost(r.arch, (side, side, channels))
    if p is not None and f is not None:
      out.append((r, p, f, r.accuracy if r.best_val_accuracy is None else r.best_val_accuracy))
  return out


def plot_cost(config, records, path: str, title: str) -> None:
  """Accuracy against params and against FLOPs, Pareto front marked, limits drawn."""
  plt = _pyplot()
  rows = _costs(config, records)
  limits = budget_lib.Budget.from_config(config)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
  acc = [row[3] for row in rows]
  for ax, col, what, short, limit in (
      (axes[0], 1, "parameters", "params", limits.max_params),
      (axes[1], 2, "forward FLOPs per example", "FLOPs", limits.max_flops)):
    cost = [row[col] for row in rows]
    ax.scatter(cost, acc, s=10, alpha=0.5, color="tab:blue", label=f"fully trained ({len(rows)})")
    front = pareto_front(cost, acc)
    ax.step([cost[i] for i in front], [acc[i] for i in front], where="post", color="tab:red",
            marker="o", markersize=4, label=f"Pareto front ({len(front)})")
    if limit:
      ax.axvline(limit, color="k", linestyle="--", label=f"limit {limit:,}")
    if cost and min(cost) > 0:
      ax.set_xscale("log")
    ax.set(xlabel=what, title=f"accuracy vs {short}")
    ax.legend(fontsize=8, loc="best", framealpha=0.6)  # where it hides the fewest points
  axes[0].set_ylabel("validation accuracy")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_stability(runs: Sequence[tuple[str, list]], path: str,
                   what: str = "validation accuracy") -> None:
  """Figure A3: mean reward (`what`) per epsilon over runs (mean and std), and each run's."""
  plt = _pyplot()
  per_run = [(name, _by_epsilon(recs)) for name, recs in runs]
  eps_all = sorted({e for _, g in per_run for e in g}, reverse=True)
  x = np.arange(len(eps_all))
  table = np.array([[np.mean(g[e]) if e in g else np.nan for e in eps_all]
                    for _, g in per_run])
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
  ax.errorbar(x, np.nanmean(table, 0), yerr=np.nanstd(table, 0), marker="o", capsize=4)
  ax.set(title=f"mean and std over {len(per_run)} runs", xlabel="ε", ylabel=f"mean {what}")
  for (name, _), row in zip(per_run, table):
    ax2.plot(x, row, marker=".", label=name)
  ax2.set(title="each run", xlabel="ε")
  ax2.legend(fontsize=7)
  for a in (ax, ax2):
    a.set_xticks(x, [f"{e:g}" for e in eps_all])
  # Of fully trained models, as inspect ranks them (not a stopped model's prediction).
  best = [max((r.accuracy for r in recs if r.status == "ok"), default=max(
      r.accuracy for r in recs)) for _, recs in runs]
  fig.suptitle(f"Q-learning stability: best {'reward' if what == 'reward' else 'model'} "
               f"{np.mean(best):.4f} ± {np.std(best):.4f}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _run_names(workdirs: Sequence[str]) -> list[str]:
  """Short, distinct names of runs for file names and legends: each folder's name, or,
  where two share one (a/run, b/run), its path below their common parent (a_run, b_run)."""
  paths = [os.path.abspath(w) for w in workdirs]
  if len(set(paths)) < len(paths):
    raise cli.UserError("a work directory is given twice: " + ",".join(workdirs))
  base = [os.path.basename(p) for p in paths]
  if len(set(base)) == len(base):
    return base
  parent = os.path.commonpath(paths)
  return [os.path.relpath(p, parent).replace(os.sep, "_") for p in paths]


def write_all(workdirs: Sequence[str], out: str | None = None) -> list[str]:
  """Writes every figure that the given work directories support; returns the paths."""
  if not workdirs:
    raise cli.UserError("plots need at least one work directory")
  out = out or os.path.join(workdirs[0], store_lib.PLOTS_DIR)
  loaded = []
  for workdir in workdirs:  # all read first: a bad work directory leaves nothing behind
    config, records, agent = load_run(workdir)
    if not records:
      raise store_lib.WorkdirError(f"{workdir} holds no models yet")
    loaded.append((workdir, config, records, agent))
  names = _run_names(workdirs)
  if os.path.exists(out) and not os.path.isdir(out):
    raise cli.UserError(f"{out} is a file, not a folder for the figures")
  os.makedirs(out, exist_ok=True)
  written, runs = [], []
  for (workdir, config, records, agent), run_name in zip(loaded, names):
    runs.append((run_name, records))
    tag = "" if len(workdirs) == 1 else run_name + "_"
    name, what = _short(config.dataset.name), _what(config, records)
    for fname, fn in (("rolling_accuracy.png", lambda p: plot_rolling(
        records, p, f"{name}: {what} over the search (Figure 3)", what)),
                      ("accuracy_by_epsilon.png", lambda p: plot_distribution(
        records, p, f"{name}: {what} per ε (Figure A4)", what)),
                      ("q_values.png", lambda p: plot_q_values(
        agent, p, f"{name}: Q-values after the search (Figure A5)")),
                      ("accuracy_vs_cost.png", lambda p: plot_cost(
        config, records, p, f"{name}: accuracy against params and FLOPs"))):
      path = os.path.join(out, tag + fname)
      fn(path)
      written.append(path)
    path = os.path.join(out, tag + "learning_curves.png")
    if plot_curves(records, path, f"{name}: learning curves"):
      written.append(path)
    else:
      print(f"{tag}learning_curves.png not written: {workdir} holds no learning curves "
            "(its models were not trained by metaqnn's trainer, or were recorded before "
            "curves were kept)", file=sys.stderr)
  datasets = sorted({config.dataset.name for _, config, _, _ in loaded})
  rules = [_reward_rule(config, store_lib.comparable(store_lib.stored_fingerprint(w)))
           for w, config, _, _ in loaded]
  differ = sorted(k for k in set().union(*rules)
                  if len({json.dumps(r.get(k), sort_keys=True) for r in rules}) > 1)
  if len(datasets) > 1:  # accuracies on different data do not average into anything
    print(f"stability.png not written: the runs are on different data sets "
          f"({', '.join(datasets)})", file=sys.stderr)
  elif differ:  # nor do rewards defined differently
    print("stability.png not written: the runs' rewards are defined differently (they "
          f"differ in {', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''})",
          file=sys.stderr)
  elif len(runs) > 1:
    path = os.path.join(out, "stability.png")
    plot_stability(runs, path, _what(loaded[0][1], [r for _, recs in runs for r in recs]))
    written.append(path)
  return written


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1 or not f.workdir or not all(w.strip() for w in f.workdir):
    raise cli.UserError("usage: python -m metaqnn.plots --workdir=DIR[,DIR2,...] [--out=DIR]")
  for path in write_all(f.workdir, f.out):
    print(path)


if __name__ == "__main__":  # flags only for the command, so the library imports cleanly
  flags.DEFINE_list("workdir", None, "Work directory, or several (comma-separated).")
  flags.DEFINE_string("out", None, "Output folder (default: first workdir's plots/).")
  cli.run(main)

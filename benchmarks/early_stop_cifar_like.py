"""Early stopping on the CIFAR-shaped synthetic set of the GPU benchmark, sized for a CPU.

  python benchmarks/early_stop_cifar_like.py [--side=16] [--train=3000] [--schedule=...]

Runs one search without early stopping (the reference) and the same search (same seed,
data and schedule) with `early_stop.kind=predictor`, then prints a table:
- the reference: training epochs, best validation accuracy, wall time;
- the offline replay of the rule on the reference (`early_stop.evaluate_offline`) at
  several deltas: R^2, epochs saved (the oracle's bound, the ceiling), true top 10
  stopped, true best stopped;
- the live run: its epochs as a share of the reference's, its best, its wall time.

The data (`gpu_search.cifar_like`): digits upscaled, coloured on a random background,
shifted and noised, at `side` x `side` x 3; unlike digits, many random networks learn it
poorly, as on CIFAR-10. A small space (depth 4, 8-32 filters, FC 64-128) keeps a CPU run
in minutes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import gpu_search  # noqa: E402
from metaqnn import early_stop, search  # noqa: E402
from metaqnn.errors import UserError  # noqa: E402

_SIDE = flags.DEFINE_integer("side", 16, "Image side of the synthetic data.")
_TRAIN = flags.DEFINE_integer("train", 3000, "Training examples (1,000 more for validation).")
_SCHEDULE = flags.DEFINE_string("schedule", "1.0:40,0.5:10,0.1:10", "search.schedule")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "train.epochs")
_SEED = flags.DEFINE_integer("seed", 0, "config.seed")
_WORKDIRS = flags.DEFINE_string("workdirs", "", "Folder for the two work directories "
                                 "(default: a temporary one).")


def config(kind: str):
  c = gpu_search.config_for(small=True)
  c.dataset.image_size = _SIDE.value
  c.space.size_bins = ()  # derived from the image side
  c.space.conv_filters = (8, 16, 32)
  c.space.fc_units = (128, 64)
  c.train.epochs, c.train.lr_decay_every = _EPOCHS.value, 3
  c.search.schedule = _SCHEDULE.value
  c.seed = _SEED.value
  c.early_stop.kind = kind
  return c


def epochs_and_best(workdir: str) -> tuple[int, float, int]:
  """(training epochs of all trained models, best validation accuracy, models stopped)."""
  db = sqlite3.connect(os.path.join(workdir, "metaqnn.db"))
  rows = db.execute("SELECT curves, accuracy, status FROM models WHERE resampled = 0 "
                    "AND status != 'over_budget'").fetchall()
  db.close()
  epochs = sum(len(c["val_accuracy"]) for r in rows if r[0] for c in json.loads(r[0]))
  best = max(r[1] for r in rows if r[2] == "ok")
  return epochs, best, sum(r[2] == "stopped" for r in rows)


def main(argv):
  del argv
  root = _WORKDIRS.value or tempfile.mkdtemp(prefix="metaqnn_es_")
  print(f"work directories in {root}", flush=True)
  data = gpu_search.cifar_like(_TRAIN.value, 1000, side=_SIDE.value)
  runs = {}
  for kind in ("none", "predictor"):
    workdir = os.path.join(root, kind)
    start = time.perf_counter()
    search.run_search(config(kind), workdir, dataset=data, tensorboard=False,
                      log_interval=1e9)
    runs[kind] = (workdir, time.perf_counter() - start, *epochs_and_best(workdir))
    print(f"{kind}: {runs[kind][1]:.0f} s, {runs[kind][2]} epochs, best "
          f"{runs[kind][3]:.4f}, {runs[kind][4]} stopped", flush=True)
  ref, live = runs["none"], runs["predictor"]
  print(f"\nEarly stopping, cifar-like {_SIDE.value}x{_SIDE.value}x3, {_TRAIN.value} train, "
        f"schedule {_SCHEDULE.value}, {_EPOCHS.value} epochs, seed {_SEED.value}\n")
  print("| run | delta | R^2 | stopped | epochs saved | oracle | ceiling | true top 10 "
        "stopped | true best stopped | best | wall |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  print(f"| reference (no early stopping) | | | | {ref[2]} epochs | | | | | {ref[3]:.4f} | "
        f"{ref[1]:.0f} s |")
  for delta in (0.05, 0.1, 0.2):
    try:
      s = early_stop.evaluate_offline(ref[0], delta=delta)
    except UserError as e:  # too few fully trained models to replay on
      print(f"| offline replay | {delta:g} | {e} | | | | | | | | |")
      continue
    print(f"| offline replay | {delta:g} | {s['r2']:.3f} | {s['stopped']} | "
          f"{100 * s['epochs_saved']:.1f}% | {100 * s['oracle_epochs_saved']:.1f}% | "
          f"{100 * s['ceiling_epochs_saved']:.1f}% | {s['top10_stopped']} | "
          f"{'yes' if s['best_stopped'] else 'no'} | | |")
  print(f"| live, predictor | 0.05 | | {live[4]} | {100 * (1 - live[2] / ref[2]):.1f}% "
        f"({live[2]} epochs) | | | | | {live[3]:.4f} | {live[1]:.0f} s |")


if __name__ == "__main__":
  app.run(main)

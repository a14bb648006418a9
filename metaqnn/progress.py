"""Progress a person can follow: one line per model (throttled), and TensorBoard scalars.

TensorBoard's scalars are derived from the record, and rebuilt from it when they may lack
some: a run that ended cleanly leaves `tensorboard/complete.json` (how many records its
scalars hold); a resume that finds it missing (a kill -9, a crash, a search from before
it was kept) or behind the record writes them all again, in record order, in place of
the old event files. So a resumed search's TensorBoard is the uninterrupted one's.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence, TextIO

from metaqnn import files
from metaqnn import results
from metaqnn import signals
from metaqnn.agent import Schedule
from metaqnn.store import ModelRecord


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
  """Prints `[eps 0.8, stage 3/10: 12/100 models | unique 1612/2700 | sample N] acc ...`
  lines and logs scalars."""

  def __init__(self, schedule: Schedule, *,
               history: Sequence[tuple[ModelRecord, int]] = (), log_interval: float = 1.0,
               tensorboard_dir: Optional[str] = None, out: Optional[TextIO] = None):
    """`history`: the record so far, in order, each with the unique models after it."""
    # sys.stdout as it is now (a notebook or a test may have redirected it)
    # The best reward of a fully trained model (as the search's result and `inspect` rank
    # them), None before the first.
    self.schedule, self.out = schedule, out or sys.stdout
    self.best: Optional[float] = None
    self.log_interval = log_interval
    self.start = time.perf_counter()
    self.trained_here = 0
    self.last_log = -float("inf")
    self.recent = collections.deque(maxlen=50)
    self.writer, self.tensorboard_dir, self.written = None, tensorboard_dir, len(history)
    rebuild = False
    if tensorboard_dir:
      from tensorboardX import SummaryWriter  # no TensorFlow needed
      rebuild = not complete(tensorboard_dir, len(history))
      _mark(tensorboard_dir, None)  # incomplete from now on, until a clean close
      if rebuild:  # (derived data: the record holds all of it)
        for old in glob.glob(os.path.join(tensorboard_dir, "events.out.tfevents.*")):
          os.remove(old)
      # tensorboardX names its file by the second: a suffix keeps two runs of one second
      # (a resume from a notebook) from writing over each other's file
      self.writer = SummaryWriter(tensorboard_dir, flush_secs=30,
                                  filename_suffix=f".{time.time_ns()}")
      if rebuild and history:
        self.out.write(f"rebuilding TensorBoard's scalars of the {len(history)} samples so "
                       "far from the record (the last run did not close them, or kept none)\n")
        self.out.flush()
    try:
      for rec, unique_models in history:  # the running best and mean, as the first run had
        self._follow(rec)
        if rebuild:
          self._scalars(rec, unique_models)
      if rebuild:
        self.writer.flush()
    except BaseException:  # a stop in a long rebuild: no writer left open (a notebook)
      if self.writer:
        self.writer.close()
      raise

  def _follow(self, rec: ModelRecord) -> None:
    if rec.status == "ok":
      self.best = rec.accuracy if self.best is None else max(self.best, rec.accuracy)
    self.recent.append(rec.accuracy)

  def update(self, rec: ModelRecord, unique_models: int) -> None:
    self._follow(rec)
    # The rate counts models trained here: not an over-budget sample (never trained), nor
    # a candidate recorded as crashed as the search resumed (it took no time).
    if results.counts_toward_schedule(rec) and rec.status != "crashed":
      self.trained_here += 1
    now = time.perf_counter()
    finished = self.schedule.stage(unique_models) is None
    if now - self.last_log >= self.log_interval or finished:
      self.last_log = now
      self.out.write(self.line(rec, unique_models) + "\n")
      self.out.flush()
    if self.writer:
      self._scalars(rec, unique_models)
    self.written += 1  # only once all its scalars are in (a stop can come between them)

  def _scalars(self, rec: ModelRecord, unique_models: int) -> None:
    step = rec.iteration
    scalars = [("search/accuracy", rec.accuracy, step)] + (
        [("search/best_accuracy", self.best, step)] if self.best is not None else []) + [
               ("search/epsilon", rec.epsilon, step),
               ("search/unique_models", unique_models, step),
               ("search/rolling_mean_accuracy", sum(self.recent) / len(self.recent), step)]
    for attempt, curve in enumerate(rec.curves):  # one run per model and attempt
      tag = f"curves/model_{rec.iteration:05d}" + (f"_attempt{attempt}" if attempt else "")
      for name, values in curve.items():
        scalars += [(f"{tag}/{name}", value, epoch) for epoch, value in enumerate(values, 1)]
    for scalar in scalars:
      # tensorboardX hands each scalar to its writer thread through a queue: a stop in
      # the middle of that could leave the thread asleep, and `close` waiting for it.
      with signals.deferred():
        self.writer.add_scalar(*scalar)

  def line(self, rec: ModelRecord, unique_models: int) -> str:
    """One model's line. Counters say what they count: the model's stage (the one it was
    sampled under) and its unique models, all unique models, and samples (re-samples
    included)."""
    stages = self.schedule.stages
    if rec.stage < len(stages):
      done_before = sum(n for _, n in stages[:rec.stage])
      in_stage = min(max(unique_models - done_before, 0), stages[rec.stage][1])
      where = f"stage {rec.stage + 1}/{len(stages)}: {in_stage}/{stages[rec.stage][1]} models"
    else:  # sampled before a resume with a shorter schedule
      where = f"stage {rec.stage + 1} of an earlier schedule"
    elapsed = time.perf_counter() - self.start
    rate = self.trained_here / elapsed if elapsed > 0 else 0.0
    remaining = self.schedule.total - unique_models
    eta = _duration(remaining / rate) if rate > 0 else "?"
    speed = f"{rate * 60:.1f}" if rate > 0 else "?"  # none trained yet in this run
    what = "re-sample" if rec.resampled else rec.status
    # The reward, and the validation accuracy beside it where they differ (the budget's
    # soft objective; an early-stopped model's prediction).
    score = f"acc {rec.accuracy:.4f}"
    val = rec.best_val_accuracy
    if rec.status == results.OVER_BUDGET:  # never trained: a reward, no accuracy
      score = f"reward {rec.accuracy:.4f}"
    elif (val is not None and abs(val - rec.accuracy) > 1e-9
          and rec.status in results.TRAINED):  # (a failure's reward: chance)
      score = f"reward {rec.accuracy:.4f} (val acc {val:.4f})"
    best = "-" if self.best is None else f"{self.best:.4f}"
    return (f"[eps {rec.epsilon:g}, {where} | unique {unique_models}/{self.schedule.total}"
            f" | sample {rec.iteration + 1}] {score} ({what}) best {best} | {speed} "
            f"models/min ETA {eta} | {rec.arch}")

  def close(self) -> None:
    """Flushes and closes TensorBoard; a stop waits for its end (close is one more put
    into the writer thread's queue, then a join on that thread), a second one does not
    (a flush to a stalled disk would otherwise hold the command for ever)."""
    if self.writer:
      with signals.deferred(second_stops=True):
        self.writer.close()
        if self.tensorboard_dir:
          _mark(self.tensorboard_dir, self.written)


_COMPLETE = "complete.json"
# What the scalars mean; logs closed under another meaning are rebuilt on resume (2:
# search/best_accuracy is the best fully trained model's, absent before the first).
_SCALARS = 2


def complete(tensorboard_dir: str, records: int) -> bool:
  """Whether the scalars in `tensorboard_dir` were closed holding all `records` records."""
  return _complete(tensorboard_dir) == records


def _complete(tensorboard_dir: str) -> Optional[int]:
  """How many records the scalars in `tensorboard_dir` hold, if a run closed them cleanly
  and they mean what this version's do."""
  try:
    with open(os.path.join(tensorboard_dir, _COMPLETE)) as f:
      state = json.load(f)
    return int(state["records"]) if state.get("scalars") == _SCALARS else None
  except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or damaged
    return None


def _mark(tensorboard_dir: str, records: Optional[int]) -> None:
  """Says that the scalars hold `records` records (None: unknown, a run is writing)."""
  path = os.path.join(tensorboard_dir, _COMPLETE)
  if records is None:
    if os.path.exists(path):
      os.remove(path)
  else:
    files.write_json(path, {"records": records, "scalars": _SCALARS})


def epoch_lines(say: Callable[[str], None], prefix: str, epochs: int,
                every: float = 30.0) -> Callable[[dict], None]:
  """A `FinalTrainer.fit` `on_epoch` that says `prefix: epoch 37/300, loss 0.41 (5m12s
  left)` after the first epoch and then at most every `every` seconds, since a final
  model can train for hours. The time left is timed on the epochs after the first, which
  waits for the compile."""
  start = first = last = time.perf_counter()

  def on_epoch(entry: dict) -> None:
    nonlocal first, last
    now = time.perf_counter()
    done = int(entry["epoch"])
    if done == 1:
      first = last = now
      if done < epochs:
        say(f"{prefix}: epoch 1/{epochs}, loss {entry['loss']:.4f} ({_duration(now - start)}"
            " with the compile)")
    elif done < epochs and now - last >= every:
      last = now
      left = (now - first) / (done - 1) * (epochs - done)
      say(f"{prefix}: epoch {done}/{epochs}, loss {entry['loss']:.4f} "
          f"({_duration(left)} left)")

  return on_epoch

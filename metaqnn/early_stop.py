"""Early stopping of poor candidates, and its offline evaluation on a finished search.

  python -m metaqnn.early_stop --workdir=DIR [--json] [--tau=0.25] [--delta=0.05]
  python -m metaqnn.early_stop --workdir=DIR --tau=0.125,0.25 --delta=0.01,0.05,0.2
  python -m metaqnn.early_stop --workdir=DIR --min_completed=10 --top=3

Not part of MetaQNN itself: its authors' follow-up (Baker, Gupta, Raskar, Naik,
"Accelerating Neural Architecture Search using Performance Prediction", ICLR 2018
workshop). `config.early_stop.kind`:
- "none" (default): every candidate trains all `train.epochs` epochs, as in the paper.
- "predictor": after tau epochs (`early_stop.tau` x epochs), a nu-SVR with an RBF kernel
  predicts the candidate's final validation accuracy (its reward) from the architecture
  (depth, the number of each layer type, log parameters, log FLOPs) and the first tau
  validation accuracies with their first and second differences. (It is fitted on the
  rise still to come over the best accuracy so far; see `Predictor`.) Its uncertainty is
  the spread of its cross-validated residuals (Gaussian). The candidate stops when the
  probability that it beats the best model so far is below `delta`. With the budget's
  soft objective (`budget.objective`), "beats" is by reward: its accuracy must pass the
  best reward divided by what its own cost multiplies an accuracy by. With
  `early_stop.top` = K > 1, the bar is the K-th best so far instead of the best (1, the
  default, is the follow-up paper's rule): candidates headed for the top K train on.
- "median": the median stopping rule, a baseline: stop after tau epochs if the best
  accuracy so far is below the median of the completed models' at the same epoch (every
  fully trained model so far, once there are `min_completed`).

The predictor is trained on fully trained models only, once there are `min_completed` of
them, and refitted on the first `min_completed + k * refit_every` of them in record
order. Its state is a function of the record alone, so it is rebuilt (not pickled) on
resume; with one worker (`num_workers=1`, the default on CPUs) a resumed search stops
exactly the candidates the uninterrupted one would. With several workers in flight (the
default on GPUs) what the rule knows when a candidate reaches tau depends on timing.

A stopped model is recorded with status "stopped", its partial curve and the predicted
accuracy. Its reward (`early_stop.reward`) is the prediction, as in the follow-up paper
("predicted"), or its last observed accuracy ("last"). The median rule has no prediction:
its stopped models carry their last observed accuracy either way.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from typing import Any, Optional, Sequence

import numpy as np

from metaqnn import budget, models, results
from metaqnn.architecture import FC, GAP, Architecture, Conv, Pool, parse
from metaqnn.errors import UserError

KINDS = ("none", "predictor", "median")
REWARDS = ("predicted", "last")


def stop_epoch(epochs: int, tau: float) -> int:
  """The epoch after which the rule decides: tau of `epochs` rounded to the nearest epoch
  (halves to even, as Python rounds: 2.5 -> 2, 1.5 -> 2), at least 1."""
  return max(1, int(round(tau * epochs)))


def check_config(config: Any) -> None:
  """Raises UserError (one line) for bad `config.early_stop` values."""
  e = config.get("early_stop")
  if e is None:
    return
  if e.kind not in KINDS:
    raise UserError(f"unknown early_stop.kind {e.kind!r}; use {', '.join(KINDS)}")
  # The values are checked with kind "none" too: a mistyped one is a mistake either way.
  if not 0 < float(e.tau) < 1:
    raise UserError(f"early_stop.tau={e.tau} must be a fraction of the epochs in (0, 1)")
  if not 0 < float(e.delta) < 1:
    raise UserError(f"early_stop.delta={e.delta} must be a probability in (0, 1)")
  if int(e.get("top", 1)) < 1:
    raise UserError(f"early_stop.top must be >= 1 (1: beat the best so far), got {e.top}")
  if e.kind == "median" and int(e.get("top", 1)) != 1:
    raise UserError(f"early_stop.top={e.top} is the predictor's; the median rule compares "
                    "with the median so far (leave top at 1)")
  if int(e.min_completed) < 5 or int(e.refit_every) < 1:
    raise UserError(f"early_stop.min_completed must be >= 5 and refit_every >= 1, got "
                    f"{e.min_completed} and {e.refit_every}")
  if e.reward not in REWARDS:
    raise UserError(f"unknown early_stop.reward {e.reward!r}; use {', '.join(REWARDS)}")
  if e.kind != "none" and (stop_epoch(int(config.train.epochs), float(e.tau))
                           >= int(config.train.epochs)):
    raise UserError(f"early_stop.tau={e.tau} of train.epochs={config.train.epochs} leaves "
                     "no epoch to save; train more epochs or lower tau")


def arch_features(arch: Architecture, input_shape: Sequence[int]) -> list[float]:
  """Depth, the number of each layer type, log10 parameters, log10 FLOPs."""
  layers = arch.layers
  count = lambda kind: float(sum(isinstance(l, kind) for l in layers))
  return [float(len(layers)), count(Conv), count(Pool), count(FC), count(GAP),
          math.log10(models.count_params(arch, input_shape)),
          math.log10(max(models.flops_per_example(arch, input_shape), 1))]


def curve_features(accuracies: Sequence[float]) -> list[float]:
  """The first tau validation accuracies with their first and second differences."""
  a = np.asarray(accuracies, np.float64)
  return list(a) + list(np.diff(a)) + list(np.diff(a, 2))


class Predictor:
  """nu-SVR (RBF) on standardised features, predicting how much a model's accuracy will
  still rise over the best it has shown by tau; Gaussian uncertainty from the
  cross-validated residuals.

  Why the rise rather than the final accuracy itself: far from the models it was fitted
  on, an RBF regressor falls back to the mean of its targets. Fitted on final accuracies,
  it predicts an unusually good early curve (the next best model) to end near the average
  model, sometimes below what it has already reached; fitted on the rise, it predicts the
  average rise on top of the lead. The final (best) accuracy is never below what was
  seen, so a predicted fall counts as no rise, and a candidate already above the
  threshold is certain to end above it. What it still cannot see is a rise larger than
  any it was fitted on: a slow starter that will climb further than every model so far is
  under-predicted, and can be stopped (the synthetic curves of `tests/test_early_stop.py`
  have one).
  """

  def __init__(self, x: np.ndarray, seen: np.ndarray, y: np.ndarray, folds: int = 5):
    from sklearn import model_selection
    rise = y - seen
    self.model = self._make().fit(x, rise)
    folds = min(folds, len(y))
    cv = model_selection.KFold(folds, shuffle=True, random_state=0)
    held_out = np.maximum(model_selection.cross_val_predict(self._make(), x, rise, cv=cv), 0)
    residuals = rise - held_out
    self.sigma = max(float(np.std(residuals)), 1e-3)
    total = float(np.sum((y - y.mean()) ** 2))  # R^2 of the final accuracy
    # Undefined when the final accuracies do not vary (beyond float rounding of the mean).
    self.r2 = 1.0 - float(np.sum(residuals ** 2)) / total if total > 1e-12 else float("nan")

  @staticmethod
  def _make():
    from sklearn import compose, pipeline, preprocessing, svm
    svr = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                 svm.NuSVR(kernel="rbf", nu=0.5, C=1.0, gamma="scale"))
    return compose.TransformedTargetRegressor(svr, transformer=preprocessing.StandardScaler())

  def predict(self, x: np.ndarray, seen: np.ndarray | float) -> np.ndarray:
    """Predicted final accuracies of feature rows whose best accuracies so far are `seen`."""
    return np.asarray(seen) + np.maximum(self.model.predict(np.atleast_2d(x)), 0)

  def prob_above(self, x: np.ndarray, seen: float, threshold: float) -> float:
    """P(final accuracy > threshold) for one feature row."""
    if seen > threshold:
      return 1.0
    z = (threshold - float(self.predict(x, seen)[0])) / self.sigma
    return 0.5 * math.erfc(z / math.sqrt(2.0))


class Rule:
  """The live rule: observes every result in record order, decides after `epoch` epochs.

  Called as `rule(arch, accuracies)` by the trainer (possibly from worker threads):
  (reward, predicted final accuracy or None) for a candidate to stop, or None to let it
  train on.
  """

  def __init__(self, config: Any):
    check_config(config)
    e, t = config.early_stop, config.train
    self.kind, self.delta, self.reward = str(e.kind), float(e.delta), str(e.reward)
    # beat the top-th best so far (1: the best; check_config keeps the median rule's at 1)
    self.top = int(e.get("top", 1))
    self.min_completed, self.refit_every = int(e.min_completed), int(e.refit_every)
    self.epochs = int(t.epochs)
    self.epoch = stop_epoch(self.epochs, float(e.tau))
    self.input_shape = budget.input_shape(config)
    self.budget = budget.Budget.from_config(config)
    # Beating the best means by reward (the soft objective's); False: by accuracy, as
    # searches recorded before did (the search sets it from its record).
    self.by_reward = True
    self._x: list[list[float]] = []
    self._seen: list[float] = []  # The best accuracy of the first tau epochs.
    self._y: list[float] = []
    self._rewards: list[float] = []
    self._lock = threading.Lock()
    self._predictor: Optional[Predictor] = None
    self._fitted_on = 0

  def seen(self, accuracies: Sequence[float]) -> float:
    """The best validation accuracy of the first tau epochs."""
    return float(max(accuracies[:self.epoch]))

  def features(self, arch: Architecture | str, accuracies: Sequence[float]) -> list[float]:
    arch = parse(arch)
    return arch_features(arch, self.input_shape) + curve_features(accuracies[:self.epoch])

  def observe(self, record: Any) -> None:
    """Learns from one record (a fully trained model; anything else is ignored)."""
    curve = record.curves[-1]["val_accuracy"] if record.curves else []
    if (record.resampled or record.status != "ok" or len(curve) < self.epochs
        or record.best_val_accuracy is None):
      return
    with self._lock:
      self._x.append(self.features(record.arch, curve))
      self._seen.append(self.seen(curve))
      self._y.append(float(record.best_val_accuracy))
      self._rewards.append(float(record.accuracy))

  def _fit_point(self, n: int) -> int:
    """How many of the first completed models the predictor is fitted on, with n known."""
    if n < self.min_completed:
      return 0
    return self.min_completed + (n - self.min_completed) // self.refit_every * self.refit_every

  def __call__(self, arch: Architecture, accuracies: Sequence[float]
               ) -> Optional[tuple[float, Optional[float]]]:
    """(reward, predicted final accuracy) of a candidate to stop now; None to go on."""
    predicted = self.predict_stop(arch, accuracies)
    if predicted is None:
      return None
    if self.kind == "median":
      return float(accuracies[-1]), None
    return (predicted if self.reward == "predicted" else float(accuracies[-1])), predicted

  def predict_stop(self, arch: Architecture, accuracies: Sequence[float]) -> Optional[float]:
    """The predicted final accuracy if the candidate should stop (median rule: its last
    accuracy), else None."""
    if self.kind == "median":  # over every completed model so far: nothing is fitted
      with self._lock:
        if len(self._seen) < self.min_completed:
          return None
        median = float(np.median(self._seen))
      return float(accuracies[-1]) if self.seen(accuracies) < median else None
    with self._lock:  # a snapshot: the fit below runs without holding the lock
      n = self._fit_point(len(self._y))
      xs, seen, ys = list(self._x[:n]), list(self._seen[:n]), list(self._y[:n])
      best = kth_best(self._rewards if self.by_reward else self._y, self.top)
      predictor = self._predictor if self._fitted_on == n else None
    if n == 0 or best is None:
      return None
    if predictor is None:  # a function of the first n models alone: deterministic
      predictor = Predictor(np.array(xs), np.array(seen), np.array(ys))
      with self._lock:
        if n > self._fitted_on:
          self._predictor, self._fitted_on = predictor, n
    x, now = np.array(self.features(arch, accuracies)), self.seen(accuracies)
    # The accuracy it must pass to beat the best reward: with the soft objective, the
    # best reward over what its cost multiplies an accuracy by (a cheap model needs less).
    threshold = (best / self.budget.factor(*budget.cost(arch, self.input_shape))
                 if self.by_reward else best)
    if predictor.prob_above(x, now, threshold) >= self.delta:
      return None
    return float(np.clip(predictor.predict(x, now)[0], 0.0, 1.0))


def kth_best(values: Sequence[float], k: int) -> Optional[float]:
  """The k-th largest of `values` (k = 1: the largest); None if there are fewer."""
  return sorted(values, reverse=True)[k - 1] if len(values) >= k else None


# -- offline evaluation -------------------------------------------------------------------


def _set_replay_rule(config, kind: str, tau: Optional[float], delta: Optional[float],
                     min_completed: Optional[int], top: Optional[int] = None) -> None:
  """`config.early_stop` as the replay asks (a record made before early stopping existed
  gets the default settings first)."""
  if "early_stop" not in config:
    from metaqnn import config_lib
    config.early_stop = config_lib.base_config("digits").early_stop
  config.early_stop.kind = kind
  if tau is not None:
    config.early_stop.tau = tau
  if delta is not None:
    config.early_stop.delta = delta
  if min_completed is not None:
    config.early_stop.min_completed = min_completed
  if top is not None:
    config.early_stop.top = top
  elif kind == "median":  # it has no top: one recorded beside kind "none" does not apply
    config.early_stop.top = 1


def _check_replayable(workdir: str, config, records: list, evaluator: Optional[str]) -> None:
  """Refuses a record the rule cannot be replayed on: one searched with early stopping,
  one without learning curves, one whose epochs leave nothing to stop."""
  if any(r.status == "stopped" for r in records):
    raise UserError(f"{workdir} was searched with early stopping: its stopped models have "
                    "no full curves to replay against")
  if records and not any(r.curves for r in records):
    why = (f"its rewards did not come from metaqnn's trainer (evaluator {evaluator!r})"
           if evaluator != "train" else "it was recorded before learning curves were kept")
    raise UserError(f"{workdir} holds no learning curves: {why}; replay a search trained "
                    "with the train evaluator")
  epochs = int(config.train.epochs)
  if epochs < 2:
    raise UserError(f"{workdir}'s models trained 1 epoch: there is no epoch to stop early")
  if stop_epoch(epochs, float(config.early_stop.tau)) >= epochs:
    raise UserError(f"tau={config.early_stop.tau:g} decides after the last of the record's "
                    f"{epochs} epochs, which leaves nothing to save; give a lower --tau")


def evaluate_offline(workdir: str, tau: Optional[float] = None,
                     delta: Optional[float] = None, kind: str = "predictor",
                     min_completed: Optional[int] = None, top: Optional[int] = None) -> dict:
  """Replays the rule on a search trained without early stopping (see the module doc)."""
  from metaqnn import store as store_lib
  with store_lib.open_existing(workdir) as store:
    config = store.config()
    records = [r for r in store.models() if not r.resampled]
    # "train", "synthetic", or "function" (a user's evaluate), as the search recorded it
    meta = store.meta()
    evaluator = (store_lib.meta_json(meta, "fingerprint", store.path)
                 if "fingerprint" in meta else {}).get("evaluator")
  _set_replay_rule(config, kind, tau, delta, min_completed, top)
  _check_replayable(workdir, config, records, evaluator)
  rule = Rule(config)
  full = [r for r in records if r.status == "ok" and r.curves
          and len(r.curves[-1]["val_accuracy"]) >= rule.epochs]
  if len(full) < rule.min_completed + 5:
    lower = "; --min_completed can lower it to 5" if rule.min_completed > 5 else ""
    raise UserError(f"{workdir} holds {len(full)} fully trained models with learning "
                     f"curves; the evaluation needs at least {rule.min_completed + 5} "
                     f"(min_completed {rule.min_completed}{lower}); search longer")
  if rule.top >= len(full):  # (1 for the median rule)
    raise UserError(f"top={rule.top} asks to beat the {ordinal(rule.top)} best of the "
                    f"{len(full)} fully trained models of {workdir}: the rule would never "
                    "act; give a lower --top")
  x = np.array([rule.features(r.arch, r.curves[-1]["val_accuracy"]) for r in full])
  seen = np.array([rule.seen(r.curves[-1]["val_accuracy"]) for r in full])
  y = np.array([r.best_val_accuracy for r in full])
  r2 = Predictor(x, seen, y).r2
  # Replay in record order: a stopped model never becomes a training example.
  total_epochs = sum(len(c["val_accuracy"]) for r in records for c in r.curves)
  stopped, saved = set(), 0
  for r in full:
    if rule.predict_stop(parse(r.arch), r.curves[-1]["val_accuracy"][:rule.epoch]) is not None:
      stopped.add(r.iteration)
      saved += rule.epochs - rule.epoch
    else:
      rule.observe(r)
  # The oracle: a rule that knew every final reward, stopping at the same epoch exactly
  # the models that end below the best (early_stop.top: the top-th best) so far, none
  # before min_completed. A rule that never stops a future leader stops a subset of
  # these, so it saves no more. Rewards are the validation accuracies, or the soft
  # objective's, by which the best is the best. (A model it stops ends below the top-th
  # best: leaving it out of the ranking changes no top-th best after it.)
  oracle, seen = 0, []
  for i, r in enumerate(full):
    bar = kth_best(seen, rule.top)
    oracle += i >= rule.min_completed and bar is not None and r.accuracy < bar
    seen.append(r.accuracy)
  ranked = sorted(full, key=results.rank_key)
  top10 = [r.iteration for r in ranked[:10]]
  # The ceiling: every model but the true top 10 stopped after epoch tau, from the first
  # model on (the fully trained ones, and any other whose last attempt ran past tau: cut
  # by a timeout, or diverged). No rule deciding then that keeps the top 10 saves more;
  # the one-epoch attempts of models that never learned, and restarts, no such rule can.
  trained = {r.iteration for r in full}
  ceiling = (len(full) - len(top10)) * (rule.epochs - rule.epoch) + sum(
      max(0, len(r.curves[-1]["val_accuracy"]) - rule.epoch)
      for r in records if r.curves and r.iteration not in trained)
  return {"workdir": workdir, "kind": kind, "tau": float(config.early_stop.tau),
          "stop_epoch": rule.epoch, "epochs": rule.epochs,
          # The median rule has no delta.
          "delta": None if kind == "median" else float(config.early_stop.delta),
          "top": None if kind == "median" else rule.top,
          "models": len(full),
          "min_completed": rule.min_completed,
          # The predictor's R^2 whatever the rule (the median rule predicts nothing; the
          # JSON says so in "r2_of"); None where it is undefined (every model ends at the
          # same accuracy): JSON has no NaN.
          "r2": r2 if math.isfinite(r2) else None, "r2_of": "predictor",
          "stopped": len(stopped),
          "epochs_saved": saved / total_epochs if total_epochs else 0.0,
          "oracle_epochs_saved": (oracle * (rule.epochs - rule.epoch) / total_epochs
                                  if total_epochs else 0.0),
          "ceiling_epochs_saved": ceiling / total_epochs if total_epochs else 0.0,
          "top10_stopped": sum(i in stopped for i in top10),
          "best_stopped": top10[0] in stopped}


def ordinal(k: int) -> str:
  """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 21st."""
  return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def beating(top: Optional[int]) -> str:
  """What a rule with `early_stop.top` > 1 must beat, for a description ("" for the
  best: the follow-up paper's rule, and the median rule's None)."""
  return f"beating the {ordinal(top)} best so far" if top and top > 1 else ""


def _r2(s: dict) -> str:
  return "undefined" if s["r2"] is None else f"{s['r2']:.3f}"


def render(s: dict) -> str:
  median = s["kind"] == "median"  # it uses neither delta nor the predictor
  return "\n".join([
      f"early stopping replayed on {s['workdir']} ({s['models']} fully trained models)",
      f"rule: {s['kind']}, decide after epoch {s['stop_epoch']} of {s['epochs']} "
      f"(tau {s['tau']:g}), " + ("" if median else f"delta {s['delta']:g}, ")
      + (f"{beating(s['top'])}, " if beating(s["top"]) else "")
      + f"after {s['min_completed']} fully trained models",
      f"predictor R^2 on held-out models (5-fold): {_r2(s)}"
      + (" (for reference: the median rule does not use it)" if median else "")
      + (" (every model ends at the same accuracy)" if s["r2"] is None else ""),
      f"stopped {s['stopped']} models; training epochs saved: {100 * s['epochs_saved']:.1f}% "
      f"(a rule that stopped exactly the models ending below the "
      + (f"{ordinal(s['top'])} " if beating(s["top"]) else "") + "best so far: "
      f"{100 * s['oracle_epochs_saved']:.1f}%)",
      f"ceiling: {100 * s['ceiling_epochs_saved']:.1f}% (every model but the true top 10 "
      f"stopped after epoch {s['stop_epoch']}: no rule deciding then saves more and keeps "
      "them)",
      f"true top 10 stopped: {s['top10_stopped']}; true best stopped: "
      f"{'yes' if s['best_stopped'] else 'no'}"])


def render_grid(rows: list[dict]) -> str:
  """One line per (tau, delta): to choose them before spending GPU time."""
  bar = beating(rows[0]["top"])
  lines = [f"early stopping replayed on {rows[0]['workdir']} ({rows[0]['models']} fully "
           f"trained models, {rows[0]['epochs']} epochs each), rule: {rows[0]['kind']}, "
           + (f"{bar}, " if bar else "")
           + f"after {rows[0]['min_completed']} fully trained models",
           f"{'tau':>6} {'epoch':>5} {'delta':>6} {'R^2':>9} {'stopped':>7} {'saved':>6} "
           f"{'oracle':>6} {'ceiling':>7} {'top 10 stopped':>14} {'best stopped':>12}"]
  for s in rows:
    delta = "-" if s["kind"] == "median" else f"{s['delta']:g}"  # the median rule has none
    lines.append(f"{s['tau']:>6g} {s['stop_epoch']:>5} {delta:>6} {_r2(s):>9} "
                 f"{s['stopped']:>7} {100 * s['epochs_saved']:>5.1f}% "
                 f"{100 * s['oracle_epochs_saved']:>5.1f}% "
                 f"{100 * s['ceiling_epochs_saved']:>6.1f}% {s['top10_stopped']:>14} "
                 f"{'yes' if s['best_stopped'] else 'no':>12}")
  return "\n".join(lines)


def _fractions(name: str, values: Optional[list[str]]) -> list[Optional[float]]:
  """The values of a comma-separated flag, each in (0, 1); [None] if it was not given."""
  from metaqnn import cli
  if values is None:
    return [None]
  try:
    numbers = [float(v) for v in values]
  except ValueError:
    numbers = []
  if not numbers or not all(0 < v < 1 for v in numbers):
    raise cli.UserError(f"--{name} takes numbers in (0, 1) separated by commas, got "
                        f"{','.join(values)!r}")
  return numbers


def _note_shared_epochs(rows: list[dict]) -> None:
  """Says on stderr which of the taus replayed decide after the same epoch (their rows
  are then the same rule), since tau x epochs is rounded to a whole epoch."""
  by_epoch: dict[int, list[float]] = {}
  for r in rows:
    taus = by_epoch.setdefault(r["stop_epoch"], [])
    if r["tau"] not in taus:
      taus.append(r["tau"])
  for epoch, taus in sorted(by_epoch.items()):
    if len(taus) > 1:
      print(f"note: tau {', '.join(f'{t:g}' for t in taus)} "
            f"{'both' if len(taus) == 2 else 'all'} decide after epoch {epoch} "
            f"of {rows[0]['epochs']} (tau x epochs is rounded to the nearest epoch, at "
            "least 1; halves to even)", file=sys.stderr)


def main(argv):
  from absl import flags
  from metaqnn import cli
  f = flags.FLAGS
  if len(argv) > 1 or not f.workdir:
    raise cli.UserError("usage: python -m metaqnn.early_stop --workdir=DIR [--json] "
                        "[--tau=0.25[,0.5...]] [--delta=0.05[,0.1...]] "
                        "[--kind=predictor|median] [--min_completed=20] [--top=1]")
  if f.kind == "median" and (f.delta is not None or f.top is not None):
    raise cli.UserError("--delta and --top are the predictor's; the median rule has neither")
  if f.top is not None and f.top < 1:
    raise cli.UserError(f"--top must be >= 1 (1: beat the best so far), got {f.top}")
  # Each value once: a value given twice is one row.
  taus, deltas = (list(dict.fromkeys(_fractions(name, values)))
                  for name, values in (("tau", f.tau), ("delta", f.delta)))
  if f.min_completed is not None and f.min_completed < 5:
    raise cli.UserError(f"--min_completed must be >= 5, got {f.min_completed}")
  rows = [evaluate_offline(f.workdir, tau, delta, f.kind, f.min_completed, f.top)
          for tau in taus for delta in deltas]
  _note_shared_epochs(rows)
  if f.json:
    print("\n".join(json.dumps(s) for s in rows))  # one object per line
  else:
    print(render(rows[0]) if len(rows) == 1 else render_grid(rows))


if __name__ == "__main__":
  from absl import flags
  from metaqnn import cli
  flags.DEFINE_string("workdir", None, "Work directory of a search without early stopping.")
  flags.DEFINE_bool("json", False, "Print one JSON object per (tau, delta).")
  flags.DEFINE_list("tau", None, "Fractions of the epochs before deciding, comma-separated "
                    "(default: the config's).")
  flags.DEFINE_list("delta", None, "Stop below this probability; several, comma-separated, "
                    "give a table (default: the config's).")
  flags.DEFINE_enum("kind", "predictor", ["predictor", "median"], "The rule to replay.")
  flags.DEFINE_integer("min_completed", None, "Fully trained models before the rule acts "
                       "(at least 5; default: the config's).")
  flags.DEFINE_integer("top", None, "Stop a candidate unlikely to beat the top-th best so "
                       "far (1: the best; default: the config's, 1 unless it was set).")
  cli.run(main)

"""One candidate's result, from the trainer to the record: the single definition.

`Result` is what an evaluation returns (the trainer, the synthetic evaluator, a user
function); `store.ModelRecord` extends it with where the model sits in the search. The
record's SQL columns are derived from these fields, so a new field is added here only
(with a default, so that records written before it still load).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Optional

# Statuses of a result. "ok", "stopped" (early stopping) and "timeout" (train.max_seconds)
# carry a reward earned by training; the others carry the chance reward 1/k (or the
# reward their message explains).
STATUSES = ("ok", "stopped", "timeout", "no_learning", "nan", "oom", "error", "invalid",
            "lost", "crashed", "over_budget")
TRAINED = STATUSES[:3]  # those whose reward training can earn (a timeout: if it learned)
OVER_BUDGET = "over_budget"  # a sample over a hard budget: recorded, never trained


@dataclasses.dataclass(kw_only=True)
class Result:
  """The outcome of evaluating one architecture; `accuracy` is the agent's reward."""
  accuracy: float
  arch: str = ""
  status: str = "ok"
  message: str = ""
  best_val_accuracy: Optional[float] = None
  last_val_accuracy: Optional[float] = None
  predicted_accuracy: Optional[float] = None  # Early stopping's prediction, if stopped.
  restarts: int = 0
  epochs: int = 0  # Epochs of the last attempt.
  params: Optional[int] = None
  flops: Optional[int] = None  # Forward FLOPs per example (see `models`).
  seconds: float = 0.0
  # Of `seconds`, the time spent waiting for its programs to compile: the compile left on
  # the critical path (0 when they were compiled ahead while another candidate trained;
  # None where nothing measured it: other evaluators, records made before it was kept).
  compile_seconds: Optional[float] = None
  # One entry per attempt (restarts included): {"val_accuracy": [...], "train_loss": [...]}.
  curves: list = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    return dataclasses.asdict(self) | {"curves": _json_curves(self.curves)}


def counts_toward_schedule(record: Any) -> bool:
  """Whether a record (its `status` and `resampled`) advances the schedule: a new model
  that was trained (a re-sample or an over-budget sample, never trained, does not).
  `Store.unique_count` is its SQL."""
  return not record.resampled and record.status != OVER_BUDGET


def earned(result: Result, chance: float) -> bool:
  """Whether training earned `result`'s reward: fully trained, stopped early, or stopped
  by the time limit after learning (a timeout before any attempt learned has the chance
  reward of a model that did not learn)."""
  return result.status in TRAINED and (result.status != "timeout" or result.accuracy > chance)


def rank_key(record: Any) -> tuple:
  """How fully trained models are ranked (inspect, plots, the final stage, the search's
  best): by reward, then by validation accuracy (the soft objective caps rewards at 1,
  where they tie), then by sample order."""
  val = record.best_val_accuracy
  return (-record.accuracy, -(record.accuracy if val is None else val), record.iteration)


def reward_kind(objective: Optional[str], statuses) -> str:
  """What a search's rewards are: "validation accuracy", as in the paper, or "reward"
  when some are not (a budget's objective scales them, an over-budget sample gets a set
  reward, a model stopped early its prediction). Plots and `inspect` label them so."""
  shaped = bool(objective) or any(s in (OVER_BUDGET, "stopped") for s in statuses)
  return "reward" if shaped else "validation accuracy"


def _json_curves(curves: list) -> list:
  """Curves with a diverged (non-finite) value as None: JSON has no NaN."""
  finite = lambda x: float(x) if math.isfinite(float(x)) else None
  return [{name: [finite(x) for x in xs] for name, xs in c.items()} for c in curves]


def sql_type(field: dataclasses.Field) -> str:
  """The SQLite column type of a result field (lists and dicts are stored as JSON text)."""
  kind = str(field.type)
  if "bool" in kind or "int" in kind:
    return "INTEGER"
  if "float" in kind:
    return "REAL"
  return "TEXT"


def plain_numbers(result: Result) -> Result:
  """`result` with its numeric fields as Python ints and floats (SQLite would store a
  NumPy scalar as bytes); ValueError (or TypeError) for one that is not a number, or a
  count that is not a whole one."""
  for f in dataclasses.fields(Result):
    value, kind = getattr(result, f.name), sql_type(f)
    if value is None or kind not in ("INTEGER", "REAL"):
      continue
    if kind == "REAL":
      value = float(value)
    elif isinstance(value, numbers.Integral):
      value = int(value)
    elif float(value).is_integer():  # not inf, not NaN
      value = int(float(value))
    else:
      raise ValueError(f"{f.name}={value} is not a whole number")
    setattr(result, f.name, value)
  return result


def to_sql(field: dataclasses.Field, value: Any) -> Any:
  if field.name == "curves":
    return json.dumps(_json_curves(value))
  if isinstance(value, bool):
    return int(value)
  return value


def from_sql(field: dataclasses.Field, value: Any) -> Any:
  if value is None:
    if field.default is not dataclasses.MISSING:
      return field.default
    if field.default_factory is not dataclasses.MISSING:
      return field.default_factory()
    return None
  if field.name == "curves":
    return [{name: [float("nan") if x is None else x for x in xs] for name, xs in c.items()}
            for c in json.loads(value)]
  if "bool" in str(field.type):
    return bool(value)
  return value

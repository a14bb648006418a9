"""Evaluators turn an architecture into a reward: trained, synthetic, or a user function.

Every evaluator is wrapped into `Evaluator.__call__(arch) -> Result`, which never raises
for a failing candidate: the failure becomes a status, a message and the chance reward.
"""

from __future__ import annotations

import hashlib
import math
import time
import traceback
from typing import Callable, Optional

from metaqnn.results import STATUSES, Result, plain_numbers

from metaqnn.architecture import FC, GAP, Architecture, Conv, Pool
from metaqnn.errors import UserError


def synthetic_accuracy(arch: Architecture) -> float:
  """A cheap, deterministic stand-in for training, for dry runs and tests.

  It rewards what tends to help small CNNs: some depth of convolutions (saturating at
  about six), 3x3 kernels, one or two poolings, and a GAP or FC head, plus a fixed
  pseudo-random term in [0, 0.1) from the SHA-256 of the architecture string. The result
  lies in [1/k, 0.95] for k classes.
  """
  hidden = arch.hidden
  convs = [l for l in hidden if isinstance(l, Conv)]
  pools = sum(isinstance(l, Pool) for l in hidden)
  fcs = sum(isinstance(l, FC) for l in hidden)
  depth_term = 1.0 - math.exp(-len(convs) / 3.0)
  kernel_term = sum(l.kernel == 3 for l in convs) / len(convs) if convs else 0.0
  pool_term = {0: 0.0, 1: 0.7, 2: 1.0}.get(pools, 0.6)
  head_term = 1.0 if isinstance(arch.terminal, GAP) or fcs == 1 else 0.5 if fcs else 0.0
  noise = int(hashlib.sha256(str(arch).encode()).hexdigest()[:8], 16) / 16 ** 8
  quality = (0.45 * depth_term + 0.15 * kernel_term + 0.15 * pool_term
             + 0.15 * head_term + 0.1 * noise)
  chance = 1.0 / arch.num_classes
  return chance + (0.95 - chance) * quality


class Evaluator:
  """Wraps a reward source: whatever it returns or raises becomes a Result."""

  def __init__(self, fn: Callable, num_classes: int):
    self.fn, self.chance = fn, 1.0 / num_classes
    self.prepares = callable(getattr(fn, "prepare", None))  # worth a guess at the next

  def prepare(self, arch: Architecture) -> None:
    """A hint that `arch` is likely next: a trainer starts compiling it; others ignore it."""
    if self.prepares:
      self.fn.prepare(arch)

  def __call__(self, arch: Architecture) -> Result:
    start = time.perf_counter()
    try:
      out = self.fn(arch)
    except MemoryError as e:
      out = Result(accuracy=self.chance, status="oom", message=f"MemoryError: {e}")
    except Exception as e:  # a failing candidate must never stop the search
      last = traceback.extract_tb(e.__traceback__)[-1]
      out = Result(accuracy=self.chance, status="error",
                   message=f"{type(e).__name__}: {e} ({last.filename}:{last.lineno})")
    out = self._to_result(out)
    out.arch = str(arch)
    if not out.seconds:
      out.seconds = time.perf_counter() - start
    return out

  def _to_result(self, out) -> Result:
    """`out` (a number or a Result) as a Result that the record and the agent can take:
    anything else becomes a failed candidate with the chance reward."""
    if isinstance(out, Result):
      try:
        out = plain_numbers(out)
      except (TypeError, ValueError) as e:
        return Result(accuracy=self.chance, status="error", message=(
            f"the evaluator returned a Result with a field that is not a number ({e})"))
    value = out.accuracy if isinstance(out, Result) else out
    try:
      value = float(value)
    except (TypeError, ValueError):
      return Result(accuracy=self.chance, status="error",
                    message=f"the evaluator returned {value!r}, not a number")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
      return Result(accuracy=self.chance, status="invalid",
                    message=f"the evaluator returned {value}, not an accuracy in [0, 1]")
    if not isinstance(out, Result):
      return Result(accuracy=value, best_val_accuracy=value)
    if out.status not in STATUSES:
      return Result(accuracy=self.chance, status="invalid", message=(
          f"the evaluator returned status {out.status!r}; known: {', '.join(STATUSES)}"))
    return out


def _train_evaluator(config, *, devices=None, dataset=None, shared=None, early_stop=None):
  from metaqnn import train  # JAX and the data set only when training for real
  # Called per candidate; its `prepare` compiles a likely next one early.
  return train.Trainer(config, dataset=dataset, devices=devices, shared=shared,
                       early_stop=early_stop,
                       early_stop_epoch=early_stop.epoch if early_stop is not None else 0)


# The evaluators a config can name (`config.evaluator`): kind -> builder of fn(arch).
KINDS: dict[str, Callable] = {
    "train": _train_evaluator,
    "synthetic": lambda config, **_: synthetic_accuracy,
}


def kind_of(config, evaluate: Optional[Callable] = None) -> str:
  """The evaluator's kind: "function" for a user's `evaluate`, else `config.evaluator`."""
  if evaluate is not None:
    return "function"
  if config.evaluator not in KINDS:
    raise UserError(f"unknown evaluator {config.evaluator!r}; use {' or '.join(KINDS)}")
  return str(config.evaluator)


def from_config(config, evaluate: Optional[Callable] = None, *, devices=None,
                dataset=None, shared: Optional[dict] = None, early_stop=None) -> Evaluator:
  """The evaluator a config asks for, or a user's `evaluate(arch) -> accuracy`.

  `devices`, `dataset`, `shared` and `early_stop` go to the trainer: the devices it trains
  on (default: all local devices, data-parallel), an already loaded data set, a dict
  through which trainers on the same devices share one device copy of it, and an early
  stopping rule (`metaqnn.early_stop`).
  """
  kind = kind_of(config, evaluate)
  fn = evaluate if evaluate is not None else KINDS[kind](
      config, devices=devices, dataset=dataset, shared=shared, early_stop=early_stop)
  return Evaluator(fn, int(config.dataset.num_classes))

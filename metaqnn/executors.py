"""Where candidates are evaluated: in the calling thread, in worker threads, or on Ray.

An executor takes `submit(key, arch)` and hands back finished `(key, Result)` pairs
from `wait()`. `Lost` in place of a Result means the worker died: the search
re-queues the candidate. `on_start(key)`, if set, is called just before a candidate
starts, so that the search can journal the attempt first. Threads overlap one
candidate's compile with another's training, and with `parallel="candidate"` give each
worker its own device.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from typing import Callable, Optional

from metaqnn import signals
from metaqnn.architecture import Architecture
from metaqnn.evaluators import Evaluator
from metaqnn.results import Result


@dataclasses.dataclass
class Lost:
  """The worker evaluating a candidate died; the candidate must be evaluated again."""
  message: str


class SerialExecutor:
  """One candidate at a time, in the calling thread."""
  on_start: Optional[Callable[[int], None]] = None

  def __init__(self, evaluate: Evaluator):
    self.capacity = 1
    self._evaluate = evaluate
    self.prepares = bool(getattr(evaluate, "prepares", False))  # `prepare` does something
    self._queue: list[tuple[int, Architecture]] = []

  def submit(self, key: int, arch: Architecture) -> None:
    self._queue.append((key, arch))

  def prepare(self, arch: Architecture) -> None:
    """A guess at the candidate submitted after the queued one: the evaluator may start
    on it (compile it) while the queued one runs. Only a hint: results do not change
    (except through wall-clock limits such as `train.max_seconds`)."""
    if self.prepares:
      self._evaluate.prepare(arch)

  def wait(self) -> list[tuple[int, Result | Lost]]:
    key, arch = self._queue.pop(0)
    if self.on_start:
      self.on_start(key)
    return [(key, self._evaluate(arch))]

  def finished(self) -> list[tuple[int, Result | Lost]]:
    return []  # nothing runs unless `wait` runs it

  def close(self) -> None:
    pass


class WorkerPool:
  """A fixed set of workers and a queue: candidates start as workers come free.

  Subclasses `_launch(worker, arch)` to start one evaluation and return its handle, and
  `finished()` to hand over, without waiting, what finished and was not taken yet;
  `wait()` starts what is queued on free workers, then pops finished handles from
  `_running` and frees their workers. A freed worker takes the next queued candidate at
  the next `submit` or `wait`, after the search has committed the result: a stop raised
  while a candidate starts never loses a result already taken.
  """
  on_start: Optional[Callable[[int], None]] = None

  def __init__(self, workers: int):
    self.capacity = workers
    self._free = list(range(workers))
    self._running: dict = {}  # handle -> (key, worker)
    self._queue: list[tuple[int, Architecture]] = []

  def submit(self, key: int, arch: Architecture) -> None:
    self._queue.append((key, arch))
    self._start()

  def _start(self) -> None:
    while self._queue and self._free:
      key, arch = self._queue.pop(0)
      worker = self._free.pop(0)
      if self.on_start:
        self.on_start(key)
      self._running[self._launch(worker, arch)] = (key, worker)

  def _launch(self, worker: int, arch: Architecture):
    raise NotImplementedError


class ThreadExecutor(WorkerPool):
  """`workers` candidates at once in threads, each worker with its own evaluator.

  `make_evaluator(i)` builds worker i's evaluator (e.g. a trainer bound to device i);
  JAX releases the GIL while compiling and running, so workers overlap.
  """

  def __init__(self, make_evaluator: Callable[[int], Evaluator], workers: int):
    super().__init__(workers)
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, "metaqnn-worker")
    self._evaluators = [make_evaluator(i) for i in range(workers)]
    self._closed = threading.Event()

  def _launch(self, worker: int, arch: Architecture) -> concurrent.futures.Future:
    return self._pool.submit(self._evaluate, worker, arch)

  def _evaluate(self, worker: int, arch: Architecture) -> Result:
    with signals.cancelled_when(self._closed):
      return self._evaluators[worker](arch)

  def wait(self) -> list[tuple[int, Result | Lost]]:
    """One finished result; others that finished stay for the next call (or `finished`).
    The search commits each before it takes the next, so a stop between two loses
    neither."""
    self._start()
    done, _ = concurrent.futures.wait(self._running,
                                      return_when=concurrent.futures.FIRST_COMPLETED)
    return [self._take(min(done, key=lambda f: self._running[f][0]))]  # earliest first

  def finished(self) -> list[tuple[int, Result | Lost]]:
    """(On a stop: nothing queued is started in their place.)"""
    return [self._take(f) for f in sorted((f for f in self._running if f.done()),
                                          key=lambda f: self._running[f][0])]

  def _take(self, future: concurrent.futures.Future) -> tuple[int, Result | Lost]:
    key, worker = self._running.pop(future)
    self._free.append(worker)
    return key, future.result()  # evaluators never raise for a candidate

  def close(self) -> None:
    """Returns at once: queued work is cancelled, and running candidates stop unrecorded
    after their epoch in progress (`signals.Cancelled`); else the process's exit would
    wait for them to finish training."""
    self._closed.set()
    self._pool.shutdown(wait=False, cancel_futures=True)


def num_workers(config, evaluate: Optional[Callable] = None) -> int:
  """`config.num_workers`, with 0 (auto) resolved: two candidates per device group with
  the train evaluator on GPUs and TPUs, so that one compiles while the other trains (the
  order of results then varies from run to run); otherwise one (sequential, bit-exact)."""
  workers = int(config.num_workers)  # >= 0: search.check_executor
  if workers:
    return workers
  if evaluate is not None or config.evaluator != "train" or config.get("executor") == "ray":
    return 1
  import jax
  if jax.default_backend() == "cpu":
    return 1
  return 2 * (len(jax.local_devices()) if config.parallel == "candidate" else 1)


def local(config, evaluate: Optional[Callable], make: Callable) -> SerialExecutor | ThreadExecutor:
  """The local executor a config asks for; `make(devices_or_None)` builds an evaluator.

  With `parallel="data"` every worker trains on all local devices (as many as the batch
  sizes divide among: `train.dividing_devices`), and the workers share one device copy of
  the data set; with "candidate", each on one device. With several workers a user
  `evaluate` function is called from several threads at once.
  """
  workers = num_workers(config, evaluate)  # parallel: checked by search.check_executor
  if evaluate is not None or config.evaluator != "train" or config.parallel == "data":
    return SerialExecutor(make(None)) if workers == 1 else \
        ThreadExecutor(lambda i: make(None), workers)
  import jax
  devices = jax.local_devices()  # one candidate per device, one worker included
  if workers == 1:
    return SerialExecutor(make(devices[:1]))
  return ThreadExecutor(lambda i: make([devices[i % len(devices)]]), workers)

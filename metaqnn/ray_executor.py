"""Candidates on a Ray cluster: W actors, each holding its data set and asking for GPUs.

The agent and the record stay on the driver (`metaqnn.main`); actors only evaluate.
A dead actor is replaced and its candidate handed back as `Lost`, which the search
re-queues (up to `search.max_crashes` times). So is an actor that has not answered within
`ray.worker_timeout` seconds (0 = no limit): it is killed, as a hung candidate would
otherwise hold its worker for ever. Ray is optional: `pip install "ray>=2.40"` (see BUILD.md).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, Optional

from metaqnn import evaluators
from metaqnn.errors import UserError
from metaqnn.executors import Lost, WorkerPool


class _Worker:
  """One Ray actor: builds its evaluator once (data on its devices), then evaluates."""

  def __init__(self, config, evaluate):
    self._evaluate = evaluators.from_config(config, evaluate)

  def evaluate(self, arch: str):
    from metaqnn.architecture import parse
    return self._evaluate(parse(arch))


class RayExecutor(WorkerPool):
  """`config.num_workers` Ray actors; `config.ray` says where and with what resources."""

  def __init__(self, config, evaluate: Optional[Callable] = None):
    # Ray >= 2.60 writes an auth token under $HOME on first start unless told not to.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    self._ray = ray
    from metaqnn import executors
    workers = executors.num_workers(config, evaluate)
    super().__init__(workers)
    r = config.ray
    if not ray.is_initialized():
      before = signal.getsignal(signal.SIGTERM)
      try:
        ray.init(address=r.address or None, include_dashboard=False, log_to_driver=False,
                 num_cpus=None if r.address else max(self.capacity * r.cpus_per_worker, 1))
      except (ConnectionError, ValueError, RuntimeError) as e:  # no cluster there
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot start or join Ray at ray.address={r.address!r}: {why}") \
            from None
      if before is not None and threading.current_thread() is threading.main_thread():
        # ray.init makes SIGTERM exit the driver (sys.exit); the search's clean stop,
        # which also survives being dropped (`metaqnn.signals`), is kept instead.
        signal.signal(signal.SIGTERM, before)
    self._remote = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker)(_Worker)
    self._timeout = float(r.get("worker_timeout", 0.0))  # >= 0: search.check_config
    self._args = (config, evaluate)
    self._actors = [self._remote.remote(*self._args) for _ in range(workers)]
    self._deadlines: dict = {}  # handle -> monotonic time after which its worker is killed

  def _launch(self, worker: int, arch):
    ref = self._actors[worker].evaluate.remote(str(arch))
    if self._timeout:
      self._deadlines[ref] = time.monotonic() + self._timeout
    return ref

  def _replace(self, i: int) -> None:
    self._ray.kill(self._actors[i])
    self._actors[i] = self._remote.remote(*self._args)  # a fresh worker

  def wait(self):
    ray = self._ray
    out = []
    self._start()
    while not out:
      timeout = None
      if self._deadlines:
        timeout = max(0.0, min(self._deadlines.values()) - time.monotonic())
      ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
      out += [self._take(ref) for ref in ready]
      now = time.monotonic()
      for ref in [r for r, t in self._deadlines.items() if t <= now]:
        key, i = self._running.pop(ref)
        del self._deadlines[ref]
        out.append((key, Lost(f"no answer within ray.worker_timeout={self._timeout:g} s; "
                              "its worker was killed")))
        self._replace(i)
        self._free.append(i)
    return out

  def finished(self):
    """(On a stop: nothing queued is started in their place, and no worker replaced.)"""
    if not self._running:
      return []
    ready, _ = self._ray.wait(list(self._running), num_returns=len(self._running),
                              timeout=0)
    return sorted((self._take(ref, replace=False) for ref in ready), key=lambda r: r[0])

  def _take(self, ref, replace: bool = True):
    """The result of a finished handle, its worker freed (and replaced if it died and
    `replace`). The handle is dropped only once its result is in hand."""
    ray = self._ray
    key, i = self._running[ref]
    try:
      out = ray.get(ref)
    except ray.exceptions.RayError as e:  # the worker died or its result was lost
      first = (str(e).strip().splitlines() or [""])[0]
      out = Lost(f"{type(e).__name__}: {first}")
      if replace:
        self._replace(i)
    del self._running[ref]
    self._deadlines.pop(ref, None)
    self._free.append(i)
    return key, out

  def close(self) -> None:
    for actor in self._actors:
      self._ray.kill(actor)
    self._actors = []

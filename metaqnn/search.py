"""The MetaQNN search (SPEC section 1): sample, evaluate, record, learn; resumable.

    from metaqnn import search
    search.run_search(config, workdir, evaluate=lambda arch: my_accuracy(str(arch)))

The agent samples an architecture under the epsilon of the stage it falls in; the sample
is journaled, then evaluated (one trained before is not trained again: its stored reward
is presented again, SPEC section 1); each result is committed to the SQLite record, then
the agent learns from it. With several workers, W evaluations are in flight and the agent
learns from each result as it arrives; stages count in-flight models, so no stage
overshoots its quota, and an architecture in flight is never sent twice.

Resume: the agent is snapshotted now and then; events journaled after the snapshot are
replayed through it in their original order (sampling is deterministic given the seed,
and each replayed sample is checked against the journal); samples that were in flight
are evaluated again. A stop at any moment loses no finished model and trains none twice.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Callable, Optional

from metaqnn import agent as agent_lib
from metaqnn import budget as budget_lib
from metaqnn import evaluators
from metaqnn import executors
from metaqnn import progress as progress_lib
from metaqnn import search_space
from metaqnn import store as store_lib
from metaqnn.store import ModelRecord, Sample, WorkdirError

AGENT_DIR = "agent"
MAX_LOST = 3  # a candidate whose worker died this many times is recorded as failed


@contextlib.contextmanager
def _atomic():
  """Holds Ctrl-C and SIGTERM back until the block is done, so that journal, record and
  agent move together; the signal then acts as usual. (Main thread only: elsewhere
  signals cannot be handled, and the block runs as it is.)"""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught = []
  previous = {sig: signal.signal(sig, lambda num, frame: caught.append((num, frame)))
              for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for num, frame in caught[:1]:
      handler = previous[num]
      if callable(handler):
        handler(num, frame)  # Python's SIGINT handler raises KeyboardInterrupt
      elif handler == signal.SIG_DFL:
        signal.raise_signal(num)


class WorkersLost(RuntimeError):
  """Workers keep dying whatever they evaluate: a broken cluster, not a bad candidate."""


@dataclasses.dataclass
class SearchResult:
  workdir: str
  unique_models: int
  iterations: int
  best_arch: Optional[str]
  best_accuracy: Optional[float]
  finished: bool


def fingerprint(config, evaluator_kind: str, replay_samples: int) -> dict:
  """What must match for a work directory to be resumed with `config`."""
  fp = {
      "replay_samples": replay_samples,  # resume replays learning with the same K
      "dataset": config.dataset.name,
      "image_size": int(config.dataset.image_size),
      "num_classes": int(config.dataset.num_classes),
      "space": search_space.SpaceConfig.from_config(config).to_json(),
      "seed": int(config.seed),
      "agent": {k: float(v) for k, v in config.agent.items()},
      "evaluator": evaluator_kind,
  }
  budget = budget_lib.Budget.from_config(config)
  if budget.active:  # only then: work directories made before budgets still resume
    fp["budget"] = budget.to_json()
  if evaluator_kind == "train":  # rewards must come from one training procedure
    data = {k: v for k, v in config.dataset.to_dict().items()
            if k not in ("data_dir", "download", "final_extra")
            and not (k == "resize" and not v)}  # absent before resizing existed
    fp["training"] = json.loads(json.dumps({"dataset": data, "train": config.train.to_dict()}))
  return fp


def restore_agent(agent: agent_lib.Agent, store: store_lib.Store, agent_dir: str,
                  replay_samples: int) -> None:
  """Brings the agent to the journal's last event: snapshot, then replay the rest."""
  if os.path.exists(os.path.join(agent_dir, agent_lib.STATE_FILE)):
    try:
      agent.load(agent_dir)
    except (ValueError, KeyError, OSError) as e:
      raise WorkdirError(f"cannot restore the agent from {agent_dir}: {e}") from None
  seen = agent.meta.get("event", -1)
  if seen > store.last_event():
    raise WorkdirError(f"the agent snapshot in {agent_dir} is ahead of the record; the "
                       "work directory is inconsistent")
  for event, item in store.events(after=seen):
    if isinstance(item, Sample):
      path = agent.sample(item.epsilon)
      if str(path.architecture) != item.arch:
        raise WorkdirError(
            f"replaying the record diverged at sample {item.id} (sampled "
            f"{path.architecture}, recorded {item.arch}); the record was not made by this "
            "configuration")
    else:
      agent.learn(item.arch, item.accuracy, new=_counts(item),
                  replay_samples=replay_samples)
    agent.meta["event"] = event


def _counts(rec: ModelRecord) -> bool:
  """Whether a result advances the schedule: a new model that was trained (a re-sample
  or an over-budget sample, never trained, does not)."""
  return not rec.resampled and rec.status != budget_lib.OVER_BUDGET


class _Search:
  """The loop's state: agent, record, executor, and what is in flight."""

  def __init__(self, agent, store, schedule, executor, prog, agent_dir, replay_samples,
               budget=budget_lib.Budget(), input_shape=None):
    self.agent, self.store, self.schedule = agent, store, schedule
    self.budget, self.input_shape = budget, input_shape
    self._costs: dict[str, tuple[int, int]] = {}
    self.executor, self.prog, self.agent_dir = executor, prog, agent_dir
    self.replay_samples = replay_samples
    self.in_flight: dict[str, list[Sample]] = {}  # arch -> samples waiting on it
    self.lost: dict[str, int] = {}
    self.lost_streak = 0  # Lost results in a row, whatever the candidate
    self.last_snapshot = time.perf_counter()
    # False while the agent is ahead of its journaled event (mid-sample, mid-learn): a
    # snapshot then would not match the record, so an interrupt there skips it.
    self.consistent = True

  @property
  def busy(self) -> int:
    """Samples waiting on a result (duplicates of an in-flight model included)."""
    return sum(len(v) for v in self.in_flight.values())

  def next_stage(self) -> Optional[int]:
    """The stage of the next unique model, counting the unique models in flight."""
    return self.schedule.stage(self.store.unique_count() + len(self.in_flight))

  def _learn(self, rec: ModelRecord) -> None:
    with _atomic():
      rec = self.store.add(rec)  # durable before the agent learns from it
      self.consistent = False
      self.agent.learn(rec.arch, rec.accuracy, new=_counts(rec),
                       replay_samples=self.replay_samples)
      self.agent.meta["event"] = self.store.last_event()
      self.consistent = True
    self.prog.update(rec, self.agent.unique_models)

  def cost(self, arch: str) -> tuple[int, int]:
    """(params, FLOPs) of an architecture on this data (cached)."""
    if arch not in self._costs:
      self._costs[arch] = budget_lib.cost(arch, self.input_shape)
    return self._costs[arch]

  def dispatch(self, sample: Sample, arch) -> None:
    """Re-sample of a finished model: learn now; in flight: wait on it; over budget:
    record it untrained; else submit."""
    prior = self.store.trained(sample.arch)
    params, flops = self.cost(sample.arch) if self.input_shape else (None, None)
    over = self.budget.over(params, flops) if self.budget.hard and prior is None else None
    if prior is not None:
      self._learn(ModelRecord(
          iteration=-1, sample=sample.id, arch=sample.arch, accuracy=prior.accuracy,
          epsilon=sample.epsilon, stage=sample.stage, status=prior.status, resampled=True,
          best_val_accuracy=prior.best_val_accuracy,
          last_val_accuracy=prior.last_val_accuracy, params=prior.params,
          flops=prior.flops if prior.flops is not None else flops))
    elif over:
      self._learn(ModelRecord(
          iteration=-1, sample=sample.id, arch=sample.arch,
          accuracy=self.budget.over_budget_reward, epsilon=sample.epsilon, stage=sample.stage,
          status=budget_lib.OVER_BUDGET, message=f"not trained: {over}", params=params,
          flops=flops))
    elif sample.arch in self.in_flight:
      self.in_flight[sample.arch].append(sample)
    else:
      self.in_flight[sample.arch] = [sample]
      self.executor.submit(sample.id, arch)

  def sample(self, stage: int) -> None:
    epsilon = self.schedule.stages[stage][0]
    with _atomic():
      self.consistent = False
      path = self.agent.sample(epsilon)
      sample = self.store.add_sample(Sample(str(path.architecture), epsilon, stage))
      self.agent.meta["event"] = sample.event
      self.consistent = True
    self.dispatch(sample, path.architecture)

  def collect(self) -> None:
    """Waits for at least one result and learns from everything that finished."""
    for key, out in self.executor.wait():
      arch = next(a for a, s in self.in_flight.items() if s[0].id == key)
      first = self.in_flight[arch][0]
      if isinstance(out, executors.Lost):
        self.lost_streak += 1
        if self.lost_streak > max(10, 3 * self.executor.capacity):
          raise WorkersLost(f"{self.lost_streak} evaluations in a row lost their worker "
                            f"(last: {out.message}); check the workers, then resume")
        self.lost[arch] = self.lost.get(arch, 0) + 1
        if self.lost[arch] < MAX_LOST:
          self.executor.submit(key, search_space.arch_lib.parse(arch))
          continue
        out = evaluators.Outcome(1.0 / self.agent.space.cfg.num_classes, "lost",
                                 f"its worker died {MAX_LOST} times: {out.message}")
      else:
        self.lost_streak = 0
      waiting = self.in_flight.pop(arch)
      params, flops = self.cost(arch) if self.input_shape else (out.params, None)
      reward = out.accuracy
      if out.status == "ok" and self.budget.objective:
        reward = self.budget.reward(out.accuracy, params, flops)
      self._learn(ModelRecord(
          iteration=-1, sample=first.id, arch=arch, accuracy=reward,
          epsilon=first.epsilon, stage=first.stage, status=out.status,
          message=out.message, best_val_accuracy=out.best_val_accuracy,
          last_val_accuracy=out.last_val_accuracy, restarts=out.restarts,
          params=out.params if out.params is not None else params, flops=flops,
          seconds=out.seconds))
      for later in waiting[1:]:  # sampled again while it was in flight
        self.dispatch(later, None)
    if time.perf_counter() - self.last_snapshot > 10.0:
      self.snapshot()

  def snapshot(self) -> None:
    """Saves the agent if it matches the journal (else resume replays from an older one)."""
    if self.consistent:
      self.agent.save(self.agent_dir)
      self.last_snapshot = time.perf_counter()

  def run(self, max_models: Optional[int]) -> None:
    for sample in self.store.pending():  # in flight when the search last stopped
      self.dispatch(sample, search_space.arch_lib.parse(sample.arch))
    start = self.store.count()
    while True:
      budget = max_models is None or self.store.count() - start < max_models
      while (budget and self.busy < self.executor.capacity
             and (stage := self.next_stage()) is not None):
        self.sample(stage)
        budget = max_models is None or self.store.count() - start < max_models
      if not self.busy:
        return
      self.collect()


def make_executor(config, evaluate: Optional[Callable], dataset=None):
  """The executor of `config.executor` (local or ray) and `config.num_workers`; `dataset`,
  if given, is the already loaded data for the local trainers."""
  kind = str(config.get("executor", "local"))
  if kind == "ray":
    from metaqnn import ray_executor  # optional dependency
    return ray_executor.RayExecutor(config, evaluate)
  if kind != "local":
    raise ValueError(f"unknown executor {kind!r}; use local or ray")
  if evaluate is not None or config.evaluator != "train":
    dataset = None  # nothing to train: no data needed
  elif dataset is None and int(config.num_workers) > 1:
    from metaqnn import input_pipeline
    dataset = input_pipeline.load(config)  # loaded once, shared by the workers
  return executors.local(config, evaluate, lambda devices: evaluators.from_config(
      config, evaluate, devices=devices, dataset=dataset))


def run_search(config, workdir: str, evaluate: Optional[Callable] = None, *,
               log_interval: Optional[float] = None, tensorboard: bool = True,
               max_models: Optional[int] = None) -> SearchResult:
  """Runs (or resumes) the whole search of `config` in `workdir`.

  Args:
    config: what `configs/<name>.py`'s `get_config()` returns.
    workdir: the work directory; created if missing, resumed if it holds this search.
    evaluate: optional `fn(architecture) -> accuracy in [0, 1]`; overrides
      `config.evaluator`. `str(architecture)` is the paper's notation.
    log_interval: seconds between progress lines (default: every trained model for
      the train evaluator, at most one per second otherwise).
    tensorboard: write TensorBoard scalars under `workdir/tensorboard`.
    max_models: stop after about this many new results (for tests and time boxes).
  """
  schedule = agent_lib.Schedule.parse(config.search.schedule)
  replay_samples = int(config.search.replay_samples)
  if replay_samples < 0:
    raise ValueError("search.replay_samples must be >= 0")
  from metaqnn import input_pipeline  # pylint: disable=import-outside-toplevel
  config = copy.deepcopy(config)
  # The data's image side, channels and classes (custom data is read here, before the
  # work directory exists, so that bad data leaves nothing behind).
  data = input_pipeline.resolve(config)
  space = search_space.from_config(config)
  budget = budget_lib.Budget.from_config(config)
  budget_lib.check_space(space, config, schedule.total)  # said at the start, not spun on
  kind = "function" if evaluate is not None else str(config.evaluator)
  if kind not in ("function", "train", "synthetic"):
    raise ValueError(f"unknown evaluator {kind!r}; use train or synthetic")
  # A new search builds its executor (loads the data) before it creates the work
  # directory, so that missing data leaves nothing behind; a resumed one checks the
  # work directory first, so that a refused one costs no data loading.
  new = not os.path.exists(os.path.join(workdir, store_lib.DB_FILE))
  executor = make_executor(config, evaluate, data) if new else None
  try:
    store = store_lib.Store(workdir, fingerprint(config, kind, replay_samples))
  except BaseException:
    if executor is not None:
      executor.close()
    raise
  try:
    store.set_meta("config", json.loads(config.to_json()))  # this run's settings
    agent = agent_lib.Agent.from_config(space, config)
    agent_dir = os.path.join(workdir, AGENT_DIR)
    restore_agent(agent, store, agent_dir, replay_samples)
    if schedule.stage(store.unique_count()) is None and not store.pending():
      return _result(workdir, store, agent, finished=True)
    executor = executor or make_executor(config, evaluate, data)
    if log_interval is None:
      log_interval = 0.0 if kind == "train" else 1.0
    best = max((r.accuracy for r in store.models()), default=0.0)
    prog = progress_lib.Progress(
        schedule, best=best, log_interval=log_interval,
        tensorboard_dir=os.path.join(workdir, "tensorboard") if tensorboard else None)
    side, channels = int(config.dataset.image_size), int(config.dataset.channels)
    loop = _Search(agent, store, schedule, executor, prog, agent_dir, replay_samples,
                   budget, (side, side, channels))
    try:
      loop.run(max_models)
    finally:
      loop.snapshot()  # first: an interrupt must not wait for running candidates
      prog.close()
    finished = schedule.stage(store.unique_count()) is None and not store.pending()
    return _result(workdir, store, agent, finished=finished)
  finally:
    if executor is not None:
      executor.close()
    store.close()


def _result(workdir, store, agent, finished: bool) -> SearchResult:
  best = max((r for r in store.models() if r.status != budget_lib.OVER_BUDGET),
             key=lambda r: r.accuracy, default=None)
  return SearchResult(workdir=workdir, unique_models=store.unique_count(),
                      iterations=store.count(), best_arch=best.arch if best else None,
                      best_accuracy=best.accuracy if best else None, finished=finished)

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

Crashes: every evaluation attempt is journaled before it starts and ended when its result
is committed or a clean stop (Ctrl-C, SIGTERM) interrupts it. An attempt left open by an
earlier process died with it (a crash or a kill -9); a candidate that has died
`search.max_crashes` times is recorded as `crashed` instead of being evaluated again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
import zipfile
from typing import Callable, Optional

import ml_collections
from absl import logging

from metaqnn import agent as agent_lib
from metaqnn import budget as budget_lib
from metaqnn import config_lib
from metaqnn import evaluators
from metaqnn import executors
from metaqnn import input_pipeline
from metaqnn import progress as progress_lib
from metaqnn import search_space
from metaqnn import signals
from metaqnn import store as store_lib
from metaqnn.results import OVER_BUDGET, Result, counts_toward_schedule, earned, rank_key
from metaqnn.store import ModelRecord, Sample, WorkdirError
from metaqnn.errors import UserError

# Samples in a row that found no new architecture before a stage is declared stuck: the
# space (as budgets constrain it) holds no architecture the agent can still find.
MAX_STALL = 10_000


def _record(result: Result, sample: Sample, resampled: bool = False) -> ModelRecord:
  """The record of `sample` with `result` (a re-sample takes its first record's result)."""
  fields = dataclasses.asdict(result) | {"arch": sample.arch}
  if resampled:
    fields.update(seconds=0.0, compile_seconds=None, curves=[])  # nothing was trained for it
  return ModelRecord(**fields, iteration=-1, sample=sample.id, epsilon=sample.epsilon,
                     stage=sample.stage, resampled=resampled)


class WorkersLost(RuntimeError):
  """Workers keep dying whatever they evaluate: a broken cluster, not a bad candidate."""


class SearchStalled(RuntimeError):
  """A stage keeps re-sampling known architectures: the space has nothing new to give."""


@dataclasses.dataclass
class SearchResult:
  workdir: str
  unique_models: int
  iterations: int
  best_arch: Optional[str]
  best_accuracy: Optional[float]
  finished: bool
  already_finished: bool = False  # finished before this call: nothing was trained


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
    # Settings that do not change how a model trains are left out (max_seconds may be
    # changed on resume); float32, the precision of records made before `dtype`
    # existed, is left out so that they still resume.
    train = store_lib.without_default_optimizer(
        {k: v for k, v in config.train.to_dict().items() if k not in ("dtype", "max_seconds")})
    from metaqnn import train as train_lib
    precision = train_lib.resolved_precision(config)
    if precision != "float32":
      train["precision"] = precision
    fp["training"] = json.loads(json.dumps({"dataset": data, "train": train}))
  # Early stopping sets the rewards of the models it stops: resumed with other settings
  # (or with none, by leaving its flags off), a search would mix two rules.
  fp["early_stop"] = _rule_fingerprint(config.get("early_stop"))
  return fp


def _rule_fingerprint(early_stop) -> dict:
  """The settings of an early stopping rule that set its rewards (none: the paper's)."""
  rule = dict(early_stop or {"kind": "none"})
  unused = {"none": set(rule) - {"kind"},  # what each rule ignores
            "median": {"delta", "reward", "refit_every", "top"}}.get(rule["kind"], set())
  if int(rule.get("top", 1)) == 1:  # the default: as records made before it existed
    unused = unused | {"top"}
  return json.loads(json.dumps({k: v for k, v in rule.items() if k not in unused}))


# What a damaged snapshot can raise while it is read (JSON, npz, or their contents).
_DAMAGED = (ValueError, KeyError, TypeError, IndexError, AttributeError, OSError, EOFError,
            zipfile.BadZipFile)


def _not_ahead(agent_dir: str, store: store_lib.Store) -> None:
  """ValueError if the snapshot has seen events the record lacks: the record's last
  commits can be lost in a power cut (SQLite syncs its log lazily, the snapshot at once).
  The record is the truth, so such a snapshot is treated as damaged."""
  with open(os.path.join(agent_dir, agent_lib.STATE_FILE)) as f:
    seen = json.load(f).get("meta", {}).get("event", -1)
  if seen > store.last_event():
    raise ValueError(f"it has seen event {seen}, the record ends at {store.last_event()}")


def agent_of(workdir: str, store: store_lib.Store) -> agent_lib.Agent:
  """The agent of a work directory's record, brought up to its last event, for reading
  (plots, inspect): nothing in the work directory is changed."""
  config = store.config()
  agent = agent_lib.Agent.from_config(search_space.from_config(config), config)
  restore_agent(agent, store, os.path.join(workdir, store_lib.AGENT_DIR),
                int(config.search.replay_samples))
  return agent


def load_agent(workdir: str) -> tuple[object, agent_lib.Agent]:
  """(config, agent) of a work directory, the agent brought up to the record's last
  event (`agent_of`); nothing there is changed."""
  with store_lib.open_existing(workdir) as store:
    return store.config(), agent_of(workdir, store)


def restore_agent(agent: agent_lib.Agent, store: store_lib.Store, agent_dir: str,
                  replay_samples: int, set_aside: bool = False) -> None:
  """Brings the agent to the journal's last event: snapshot, then replay the rest.

  The record is the source of truth: a snapshot that cannot be read, or whose replay
  then diverges from the record (another search's, copied in), is ignored and the agent
  is rebuilt from the whole record, with one line saying so. With `set_aside` (the
  search), the damaged files are moved to `agent.damaged-<time>/`, never deleted.
  """
  if os.path.exists(os.path.join(agent_dir, agent_lib.STATE_FILE)):
    # What a rebuild starts from (the search space is shared, never changed).
    fresh = {k: v if k == "space" else copy.deepcopy(v) for k, v in agent.__dict__.items()}
    try:
      _not_ahead(agent_dir, store)
      agent.load(agent_dir)  # all or nothing: a failed load leaves the agent fresh
      _check_memory(agent, store)
      _replay(agent, store, replay_samples)
      return
    except (_Diverged,) + _DAMAGED as e:
      agent.__dict__.update(fresh)
      _snapshot_unusable(agent_dir, store, e, set_aside)
  try:
    _replay(agent, store, replay_samples)
  except _Diverged as e:
    raise WorkdirError(f"{e}; the record was not made by this configuration") from None


class _Diverged(Exception):
  """A replayed sample that is not the one recorded."""


def _check_memory(agent: agent_lib.Agent, store: store_lib.Store) -> None:
  """_Diverged unless the snapshot's replay memory is the record's results up to its
  event: another search's snapshot with as many events would replay nothing to diverge."""
  learned = store.learned(through=agent.meta.get("event", -1))
  if agent.replay != learned:
    at = next((i for i, (a, b) in enumerate(zip(agent.replay, learned)) if a != b),
              min(len(agent.replay), len(learned)))
    raise _Diverged(f"its replay memory differs from the record's results at result {at}")


def _replay(agent: agent_lib.Agent, store: store_lib.Store, replay_samples: int) -> None:
  """Replays the record's events after the agent's last one: samples drawn again (each
  must be the recorded one), results learned."""
  for event, item in store.events(after=agent.meta.get("event", -1)):
    if isinstance(item, Sample):
      path = agent.sample(item.epsilon)
      if str(path.architecture) != item.arch:
        raise _Diverged(f"replaying the record diverged at sample {item.id} (sampled "
                        f"{path.architecture}, recorded {item.arch})")
    else:
      agent.learn(item.arch, item.accuracy, new=counts_toward_schedule(item),
                  replay_samples=replay_samples)
    agent.meta["event"] = event


def _snapshot_unusable(agent_dir: str, store: store_lib.Store, e: Exception,
                       set_aside: bool) -> None:
  """Says that the snapshot in `agent_dir` is not used (and, `set_aside`, moves it to
  `agent.damaged-<time>/`)."""
  why = (f"{e}: it does not match the record, another search's perhaps"
         if isinstance(e, _Diverged) else " ".join(f"{type(e).__name__}: {e}".split())[:160])
  kept = ""
  if set_aside:
    aside = f"{agent_dir}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    while os.path.exists(aside):
      aside += "+"
    os.rename(agent_dir, aside)
    kept = f"; its files are kept in {aside}"
  print(f"the agent snapshot in {agent_dir} cannot be used ({why}); rebuilding the "
        f"agent from the record ({store.last_event() + 1} events){kept}", file=sys.stderr)


class _Search:
  """The loop's state: agent, record, executor, and what is in flight."""

  def __init__(self, agent, store, schedule, executor, prog, agent_dir, replay_samples,
               early_stop, max_crashes: int, budget: budget_lib.Budget,
               input_shape: tuple[int, int, int], objective_ok_only: bool = False):
    self.agent, self.store, self.schedule = agent, store, schedule
    self.early_stop = early_stop
    self.budget, self.input_shape = budget, input_shape
    self.chance = 1.0 / agent.space.cfg.num_classes  # the reward of what never learned
    # Records made when the soft objective scaled fully trained models only go on so.
    self.objective_ok_only = objective_ok_only
    self._costs: dict[str, tuple[int, int]] = {}
    self.executor, self.prog, self.agent_dir = executor, prog, agent_dir
    self.replay_samples, self.max_crashes = replay_samples, max_crashes
    self.in_flight: dict[str, list[Sample]] = {}  # arch -> samples waiting on it
    self.attempts: dict[int, int] = {}  # sample id -> its running attempt's id
    executor.on_start = self.started
    self.lost_streak = 0  # Lost results in a row, whatever the candidate
    self.stalled = 0  # samples in a row that found no new architecture
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

  def _learn(self, rec: ModelRecord, attempt: Optional[int] = None) -> None:
    with signals.deferred():
      rec = self.store.add(rec)  # durable before the agent learns from it
      if attempt is not None:
        self.store.end_attempts([attempt], "done")
      self.consistent = False
      self.agent.learn(rec.arch, rec.accuracy, new=counts_toward_schedule(rec),
                       replay_samples=self.replay_samples)
      self.agent.meta["event"] = self.store.last_event()
      self.consistent = True
    if self.early_stop is not None:
      self.early_stop.observe(rec)
    self.prog.update(rec, self.agent.unique_models)

  def cost(self, arch: str) -> tuple[int, int]:
    """(params, FLOPs) of an architecture on this data (cached)."""
    if arch not in self._costs:
      self._costs[arch] = budget_lib.cost(arch, self.input_shape)
    return self._costs[arch]

  def untrained(self, arch: str) -> tuple[Optional[ModelRecord], Optional[str]]:
    """What lets a sample be learned from without training: (the architecture's earlier
    record, why it is over the hard budget); both None when it must be trained."""
    prior = self.store.trained(arch)
    if prior is not None or not self.budget.hard:
      return prior, None
    return None, self.budget.over(*self.cost(arch))

  def dispatch(self, sample: Sample, arch) -> None:
    """Re-sample of a finished model: learn now; in flight: wait on it; over budget:
    record it untrained; else submit."""
    prior, over = self.untrained(sample.arch)
    params, flops = self.cost(sample.arch)
    if prior is not None:
      rec = _record(prior.result(), sample, resampled=True)
      rec.flops = rec.flops if rec.flops is not None else flops
      self._learn(rec)
    elif over:
      self._learn(_record(Result(
          accuracy=self.budget.over_budget_reward, status=OVER_BUDGET,
          message=f"not trained: {over}", params=params, flops=flops), sample))
    elif sample.arch in self.in_flight:
      self.in_flight[sample.arch].append(sample)
    else:
      self.in_flight[sample.arch] = [sample]
      self.executor.submit(sample.id, arch)

  def started(self, key: int) -> None:
    """Journals an attempt just before the executor starts it, so a crash leaves a trace."""
    with signals.deferred():
      self.attempts[key] = self.store.start_attempt(key)

  def interrupted(self) -> None:
    """A clean stop: the running attempts did not crash anything, so they do not count."""
    with signals.deferred():
      self.store.end_attempts(list(self.attempts.values()), "interrupted")
      self.attempts.clear()

  def sample(self, stage: int) -> None:
    epsilon = self.schedule.stages[stage][0]
    with signals.deferred():
      self.consistent = False
      path = self.agent.sample(epsilon)
      sample = self.store.add_sample(Sample(str(path.architecture), epsilon, stage))
      self.agent.meta["event"] = sample.event
      self.consistent = True
    before = len(self.in_flight)
    self.dispatch(sample, path.architecture)
    self.stalled = 0 if len(self.in_flight) > before else self.stalled + 1
    if self.stalled >= MAX_STALL:
      if self.budget.hard and not self.budget.prune:
        why = ("the agent keeps drawing architectures it has seen or that are over the "
               "budget (budget.prune=False lets it); shorten search.schedule and run the same "
               "command, or start a new work directory with budget.prune=True, the default, "
               "or a looser budget")
      else:
        why = ("the space seems exhausted; shorten search.schedule and run the same "
               "command, or start a new work directory with a larger config.space"
               + (" or a looser budget" if self.budget.hard else ""))
      raise SearchStalled(
          f"stage {stage + 1} drew {self.stalled} samples in a row without a new "
          f"architecture ({self.store.unique_count()} unique models so far, the schedule "
          f"asks for {self.schedule.total}): {why}")

  def resume_pending(self) -> None:
    """Evaluates again what was in flight when the search stopped, except a candidate
    that already crashed the process `max_crashes` times: it is recorded as crashed.

    A candidate that crashed before is evaluated alone, before anything else: with worker
    threads, one candidate's crash kills the others in flight too, and alone it either
    finishes or shows that it is the one that crashes.
    """
    later = []
    for sample in self.store.pending():
      # (Nothing is in flight here: a candidate that crashed before finishes below.)
      crashes = self.store.crashes(sample.arch) if self.store.trained(sample.arch) is None else 0
      if crashes >= self.max_crashes:
        print(f"{sample.arch} crashed the search {crashes} times "
              f"(search.max_crashes={self.max_crashes}): recorded as crashed, not evaluated "
              "again", file=sys.stderr)
        self._learn(_record(Result(
            accuracy=self.chance, status="crashed", message=(
                f"the search process died {crashes} times while evaluating it (an abort, "
                "a segfault, an out-of-memory kill, or a kill -9); not evaluated again "
                f"(search.max_crashes={self.max_crashes})")), sample))
        continue
      if not crashes:
        later.append(sample)
        continue
      print(f"{sample.arch} was being evaluated when the search died ({crashes} "
            f"crash{'es' if crashes > 1 else ''} so far, search.max_crashes="
            f"{self.max_crashes}); evaluating it again, alone", file=sys.stderr)
      self.dispatch(sample, search_space.arch_lib.parse(sample.arch))
      while self.busy:
        self.collect()
    for sample in later:
      self.dispatch(sample, search_space.arch_lib.parse(sample.arch))

  def collect(self) -> None:
    """Waits for at least one result and learns from what the executor hands over."""
    for key, out in self.executor.wait():
      self._take(key, out)
    if time.perf_counter() - self.last_snapshot > 10.0:
      self.snapshot()

  def keep_finished(self) -> None:
    """On a stop: learns from results that finished but were not taken yet, so that a
    stop between two finished candidates loses neither (a lost worker's candidate stays
    pending, as every unfinished one does)."""
    for key, out in self.executor.finished():
      if not isinstance(out, executors.Lost):
        self._take(key, out)

  def _take(self, key: int, out) -> None:
    """Commits one executor result and lets the agent learn from it (a lost worker's
    candidate is evaluated again, up to `max_crashes`)."""
    arch = next(a for a, s in self.in_flight.items() if s[0].id == key)
    first = self.in_flight[arch][0]
    attempt = self.attempts.pop(key, None)
    if isinstance(out, executors.Lost):
      if attempt is not None:
        self.store.end_attempts([attempt], "lost")
      self.lost_streak += 1
      if self.lost_streak > max(10, 3 * self.executor.capacity):
        raise WorkersLost(f"{self.lost_streak} evaluations in a row lost their worker "
                          f"(last: {out.message}); check the workers, then resume")
      crashes = self.store.crashes(arch)
      if crashes < self.max_crashes:
        self.executor.submit(key, search_space.arch_lib.parse(arch))
        return
      out = Result(accuracy=self.chance, status="lost",
                   arch=arch, message=f"its evaluation crashed {crashes} times "
                   f"(search.max_crashes={self.max_crashes}); last: {out.message}")
    else:
      self.lost_streak = 0
    waiting = self.in_flight.pop(arch)
    params, flops = self.cost(arch)
    scaled = out.status == "ok" if self.objective_ok_only else earned(out, self.chance)
    if self.budget.objective and scaled:  # the soft, MnasNet-style reward
      if out.best_val_accuracy is None:  # (a user's evaluate): the accuracy it scales
        out.best_val_accuracy = out.accuracy
      out.accuracy = self.budget.reward(out.accuracy, params, flops)
    out.params = out.params if out.params is not None else params
    out.flops = out.flops if out.flops is not None else flops
    self._learn(_record(out, first), attempt)
    for later in waiting[1:]:  # sampled again while it was in flight
      self.dispatch(later, None)

  def guess_next(self, running: str) -> Optional[search_space.arch_lib.Architecture]:
    """The architecture this loop will submit after `running`, had `running` earned the
    mean reward so far: a simulation of `run` on a copy of the agent, which learns from
    re-samples and over-budget samples as `dispatch` does (`untrained`). The serial
    executor compiles it while `running` trains; a wrong guess costs only a discarded
    compile."""
    ghost = self.agent.fork()
    rewards = [r for _, r in ghost.replay]
    guessed = sum(rewards) / len(rewards) if rewards else ghost.q_init
    ghost.learn(running, guessed, new=True, replay_samples=self.replay_samples)
    unique = self.store.unique_count() + 1
    for _ in range(50):  # on the critical path: give up rather than simulate long
      stage = self.schedule.stage(unique)
      if stage is None:
        return None
      path = ghost.sample(self.schedule.stages[stage][0])
      arch = str(path.architecture)
      if arch == running:
        reward = guessed
      else:
        prior, over = self.untrained(arch)
        if prior is None and not over:
          return path.architecture
        reward = prior.accuracy if prior is not None else self.budget.over_budget_reward
      ghost.learn(arch, reward, new=False, replay_samples=self.replay_samples)
    return None

  def prepare_next(self) -> None:
    """With one candidate at a time, lets the executor compile a guess at the next one.

    Off with `search.max_crashes=1`: a background compile that kills the process is
    charged to the running candidate, which must then get its retry alone. A failing
    guess never stops the search."""
    if (getattr(self.executor, "prepares", False) and self.executor.capacity == 1
        and len(self.in_flight) == 1 and self.max_crashes >= 2):
      try:
        guess = self.guess_next(next(iter(self.in_flight)))
        if guess is not None:
          self.executor.prepare(guess)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("no guess at the next candidate: %s: %s", type(e).__name__, e)

  def snapshot(self) -> None:
    """Saves the agent if it matches the journal (else resume replays from an older one)."""
    if self.consistent:
      self.agent.save(self.agent_dir)
      self.last_snapshot = time.perf_counter()

  def run(self, max_models: Optional[int]) -> None:
    self.resume_pending()  # in flight when the search last stopped
    start = self.store.count()
    while True:
      signals.check()  # a stop that Python dropped (see `signals`)
      budget = max_models is None or self.store.count() - start < max_models
      while (budget and self.busy < self.executor.capacity
             and (stage := self.next_stage()) is not None):
        self.sample(stage)
        budget = max_models is None or self.store.count() - start < max_models
      if not self.busy:
        return
      if budget:  # more candidates to come
        self.prepare_next()
      self.collect()


# Replays of the memory after each result: the paper's 100, and room to study more; a
# value beyond is a typo, which would stall every step.
MAX_REPLAY_SAMPLES = 1_000_000
# Workers at once: more than any machine runs candidates side by side.
MAX_WORKERS = 4096


def check_executor(config) -> None:
  """Refuses, in one line, an executor, worker count or parallel mode that cannot run."""
  kind = str(config.get("executor", "local"))
  if kind not in ("local", "ray"):
    raise UserError(f"unknown executor {kind!r}; use local or ray")
  stop = config.get("early_stop")
  if kind == "ray" and stop is not None and stop.kind != "none":
    raise UserError("early_stop.kind needs the local executor (the rule lives beside "
                    "the record); use --config.executor=local")
  if not 0 <= int(config.num_workers) <= MAX_WORKERS:
    raise UserError(f"num_workers must be in 1..{MAX_WORKERS} (or 0 = auto), got "
                    f"{config.num_workers}")
  if config.parallel not in ("data", "candidate"):
    raise UserError(f"parallel must be data or candidate, got {config.parallel!r}")
  if kind == "ray":
    for field in ("cpus_per_worker", "gpus_per_worker"):  # (Ray's own refusal: a traceback)
      value = float(config.ray[field])
      if not 0 <= value < 2**20:
        raise UserError(f"ray.{field} must be a finite number >= 0, got {config.ray[field]}")


def make_executor(config: ml_collections.ConfigDict, evaluate: Optional[Callable],
                  early_stop=None, dataset: Optional[input_pipeline.Dataset] = None
                  ) -> executors.SerialExecutor | executors.WorkerPool:
  """The executor of `config.executor` (local or ray) and `config.num_workers`, settings
  `check_config` has accepted; `dataset` (an `input_pipeline.Dataset`) replaces loading
  `config.dataset`."""
  if str(config.get("executor", "local")) == "ray":
    from metaqnn import ray_executor  # optional dependency
    return ray_executor.RayExecutor(config, evaluate)
  if evaluate is not None or config.evaluator != "train":
    dataset = None  # nothing to train: no data needed
  elif dataset is None and executors.num_workers(config, evaluate) > 1:
    dataset = input_pipeline.load(config)  # loaded once, shared by the workers
  shared: dict = {}  # one device copy of the data per device group
  return executors.local(config, evaluate, lambda devices: evaluators.from_config(
      config, evaluate, devices=devices, dataset=dataset, shared=shared,
      early_stop=early_stop))


def run_search(config: ml_collections.ConfigDict, workdir: str,
               evaluate: Optional[Callable] = None, *,
               log_interval: Optional[float] = None, tensorboard: bool = True,
               max_models: Optional[int] = None,
               dataset: Optional[input_pipeline.Dataset] = None,
               on_start: Optional[Callable[[bool, int], None]] = None,
               check_resume: Optional[Callable[[object], None]] = None) -> SearchResult:
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
    dataset: an `input_pipeline.Dataset` already in memory (arrays of your own, a
      benchmark's generated data), used instead of loading `config.dataset`.
    on_start: called with (new, unique models done so far) once the config, the
      data and the work directory are accepted, before the first model is prepared (and
      the data of a built-in set loaded): a command's first line, never printed before
      a refusal. Your own data (npz:, folder:, tfds:) is read before it, since it is
      checked. Not called for a search that is already finished.
    check_resume: called on a resume with this run's settings (the data's fields
      resolved) once the record is known to be this search's (its fingerprint, and its
      data where the record's digest is in the database file) and locked, before
      anything is written to it; it may refuse the run by raising (main: final models
      kept from other final settings).
  """
  plan = _plan(config, workdir, evaluate, max_models, dataset)
  config, rule = plan.config, plan.rule
  if plan.new and on_start is not None:
    on_start(True, 0)
  # A new search builds its executor (loads the data) before it creates the work
  # directory, so that missing data leaves nothing behind; a resumed one checks the
  # work directory first, so that a refused one costs no data loading.
  executor = make_executor(config, evaluate, rule, plan.dataset) if plan.new else None
  try:
    signals.check()  # a stop dropped while the data loaded: nothing is written yet
    data = (input_pipeline.digest(plan.dataset)  # only then do the rewards depend on it
            if plan.dataset is not None and plan.kind == "train" else None)
    store = store_lib.Store(workdir, plan.fingerprint, data, check=check_resume and (
        lambda: check_resume(config)))
  except BaseException:
    if executor is not None:
      executor.close()
    raise
  try:
    _record_settings(plan, store)
    agent_dir = os.path.join(workdir, store_lib.AGENT_DIR)
    restore_agent(plan.agent, store, agent_dir, plan.replay_samples, set_aside=True)
    tensorboard_dir = os.path.join(workdir, store_lib.TENSORBOARD_DIR) if tensorboard else None
    schedule = plan.schedule
    if schedule.stage(store.unique_count()) is None and not store.pending():
      if tensorboard_dir and not progress_lib.complete(tensorboard_dir, store.count()):
        # the run that ended it was killed before it closed them
        progress_lib.Progress(schedule, history=_history(store),
                              tensorboard_dir=tensorboard_dir).close()
      return dataclasses.replace(_result(workdir, store, finished=True),
                                 already_finished=True)
    if not plan.new and on_start is not None:
      on_start(False, store.unique_count())
    executor = executor or make_executor(config, evaluate, rule, plan.dataset)
    if rule is not None:
      for rec in store.models():
        rule.observe(rec)
    if log_interval is None:
      log_interval = 0.0 if plan.kind == "train" else 1.0
    prog = progress_lib.Progress(schedule, history=_history(store), log_interval=log_interval,
                                 tensorboard_dir=tensorboard_dir)
    loop = _Search(plan.agent, store, schedule, executor, prog, agent_dir,
                   plan.replay_samples, rule, int(config.search.get("max_crashes", 2)),
                   plan.budget, budget_lib.input_shape(config),
                   objective_ok_only=plan.legacy)
    try:
      with signals.as_interrupts():
        loop.run(max_models)
    except KeyboardInterrupt:
      loop.keep_finished()  # what finished beside the last result taken
      raise
    finally:
      loop.interrupted()  # a clean stop: what was running did not crash the process
      loop.snapshot()  # before the executor closes: never wait for running candidates
      prog.close()
    finished = schedule.stage(store.unique_count()) is None and not store.pending()
    return _result(workdir, store, finished=finished)
  finally:
    if executor is not None:
      executor.close()
    store.close()


@dataclasses.dataclass
class _Plan:
  """A search accepted before anything is written: its settings resolved and checked."""
  config: ml_collections.ConfigDict  # a copy, its data fields resolved
  kind: str  # the evaluator's (evaluators.kind_of)
  schedule: agent_lib.Schedule
  replay_samples: int
  dataset: Optional[input_pipeline.Dataset]  # None: a built-in set, loaded by the executor
  in_memory: bool  # given as arrays: config.dataset cannot load it again
  budget: budget_lib.Budget
  agent: agent_lib.Agent
  rule: object  # the early stopping rule, None for the paper's search
  fingerprint: dict
  legacy: bool  # recorded before early stopping joined the fingerprint
  new: bool  # no record yet


def _plan(config, workdir, evaluate, max_models, dataset) -> _Plan:
  """Every check that needs no record written, in the order that reads the least: the
  config and arguments, the work directory, the data (custom data is read and checked),
  the space, the budget and the early stopping rule; refused in one line."""
  config_lib.check_known(config)  # a typo made in Python, not silently ignored
  _check_arguments(workdir, evaluate, max_models)
  schedule = agent_lib.Schedule.parse(config.search.schedule)
  store_lib.check_workdir(workdir)  # before any data is read
  replay_samples = int(config.search.replay_samples)
  if not 0 <= replay_samples <= MAX_REPLAY_SAMPLES:
    raise UserError(f"search.replay_samples must be in 0..{MAX_REPLAY_SAMPLES:,} (the "
                    f"paper: 100), got {replay_samples}")
  config_lib.check_seed(config)
  budget_lib.check_config(config)  # the config alone: before any data is read
  kind = evaluators.kind_of(config, evaluate)
  config = copy.deepcopy(config)
  recorded = store_lib.stored_fingerprint(workdir)  # {} for a new search
  in_memory = dataset is not None
  dataset = _resolve_data(config, workdir, dataset, kind, recorded)
  space = search_space.from_config(config)
  budget = budget_lib.Budget.from_config(config)
  check_config(config, schedule, space)
  if kind == "train":
    from metaqnn import train as train_lib  # pylint: disable=import-outside-toplevel
    train_lib.check_settings(config, final=False)
  budget_lib.check_space(space, config, schedule.total)  # said at the start, not spun on
  agent = agent_lib.Agent.from_config(space, config)  # refuses a bad agent config
  rule = _early_stop_rule(config, kind, recorded, schedule)
  if config.get("compile_cache_dir"):
    _enable_compile_cache(str(config.compile_cache_dir))
  new = not os.path.exists(os.path.join(workdir, store_lib.DB_FILE))
  # A record made before early stopping joined the fingerprint: it resumes with the
  # rule its settings name, and with the budget objective's rule of then (fully
  # trained models only are scaled).
  legacy = bool(recorded) and "early_stop" not in recorded
  if not new and kind == "train":
    _keep_recorded_precision(config, recorded)
  fp = fingerprint(config, kind, replay_samples)
  if legacy:
    _check_legacy_rule(workdir, fp)
    del fp["early_stop"]
  return _Plan(config=config, kind=kind, schedule=schedule, replay_samples=replay_samples,
               dataset=dataset, in_memory=in_memory, budget=budget, agent=agent, rule=rule,
               fingerprint=fp, legacy=legacy, new=new)


def _check_legacy_rule(workdir: str, fp: dict) -> None:
  """A record made before early stopping joined the fingerprint resumes only under the
  rule its last run recorded in its settings (none, for a record made before early
  stopping existed): another would mix two rules' rewards."""
  was = _rule_fingerprint(store_lib.stored_config(workdir).get("early_stop"))
  if was != fp["early_stop"]:
    differ = store_lib.differences({"early_stop": was}, {"early_stop": fp["early_stop"]})
    raise store_lib.WorkdirError(
        f"the work directory {workdir} was made for another search (differs in: "
        f"{', '.join(differ)}; it was made with early_stop {store_lib.rule_text(was)}: give "
        "those --config.early_stop flags); it was left untouched")


def _record_settings(plan: _Plan, store: store_lib.Store) -> None:
  """This run's settings in the record, and what the early stopping rule compares."""
  store.set_meta("config", json.loads(plan.config.to_json()))
  if plan.in_memory:  # config.dataset does not load it: the final stage must be given it
    store.set_meta(store_lib.DATA_IN_MEMORY, True)
  if plan.rule is not None:
    # Under the soft objective the rule compares rewards in records that say so; one
    # made before (none says) resumes comparing accuracies, as it began.
    if store.count() == 0:
      store.set_meta("stop_by_reward", True)
    plan.rule.by_reward = "stop_by_reward" in store.meta()


def _resolve_data(config, workdir: str, dataset, kind: str, recorded: dict):
  """The search's data (`dataset` if given in memory), with `config.dataset`'s image side,
  channels and classes set from it. Custom data is read here, before the work directory
  exists, so that bad data leaves nothing behind; a built-in set is only checked (None)."""
  _record_absolute_paths(config, recorded)
  if dataset is None:
    _check_workdir_outside_data(config, workdir)
    _keep_recorded_channels(config, recorded)
    return input_pipeline.resolve(config)
  if str(config.get("executor", "local")) == "ray" and kind == "train":
    raise UserError("data in memory (dataset=...) stays in this process, and Ray workers "
                    "load config.dataset; use the local executor, or save the arrays as "
                    ".npz and set dataset.name=npz:PATH")
  input_pipeline.check(dataset)  # checked as read data is; the config's fields follow it
  config.dataset.image_size = int(dataset.train_images.shape[1])
  config.dataset.channels = int(dataset.train_images.shape[3])
  config.dataset.num_classes = int(dataset.num_classes)
  return dataset


def _early_stop_rule(config, kind: str, recorded: dict, schedule: agent_lib.Schedule):
  """The early stopping rule `config.early_stop` asks for (None: the paper's search),
  rebuilt from the record later, never pickled; refused where it could never act."""
  if config.get("early_stop") is None or config.early_stop.kind == "none":
    return None
  if kind != "train":
    raise UserError("early stopping needs the train evaluator (it watches learning "
                    "curves); set early_stop.kind=none")
  from metaqnn import early_stop  # pylint: disable=import-outside-toplevel
  rule = early_stop.Rule(config)
  if not recorded and rule.min_completed >= schedule.total:  # (a record resumes as made)
    raise UserError(f"early_stop.min_completed={rule.min_completed} waits for as many "
                    f"fully trained models as the schedule's {schedule.total} unique "
                    "models: the rule would never act; lower it (at least 5) or lengthen "
                    "the schedule")
  if not recorded and rule.top >= schedule.total:  # (1 for the median rule)
    raise UserError(f"early_stop.top={rule.top} asks candidates to beat the "
                    f"{early_stop.ordinal(rule.top)} best of a schedule of {schedule.total} "
                    "unique models: the rule would never act; lower it (1: beat the best)")
  return rule


def _check_arguments(workdir, evaluate, max_models) -> None:
  """Refuses, before anything is written, what a caller in Python can get wrong that the
  commands cannot: no path, an evaluate that is no function of one architecture, a
  model count below one."""
  if not isinstance(workdir, (str, os.PathLike)) or not str(workdir).strip():
    raise UserError(f"workdir must be a path (a new or this search's work directory), not "
                    f"{workdir!r}")
  if evaluate is not None:
    import inspect as inspect_lib  # pylint: disable=import-outside-toplevel
    try:
      inspect_lib.signature(evaluate).bind(None)
    except TypeError:  # not callable, or not with one argument
      raise UserError("evaluate must be a function of one architecture that returns its "
                      f"accuracy, got {evaluate!r}") from None
    except ValueError:  # a builtin without a signature: taken as it is
      pass
  if max_models is not None and int(max_models) < 1:
    raise UserError(f"max_models must be >= 1 (or None: the whole schedule), got "
                    f"{max_models}")


def _record_absolute_paths(config, recorded: dict) -> None:
  """Data paths are recorded absolute (`input_pipeline.absolute`), except the name of a
  search `recorded` with the same relative path before they were: it resumes as it was
  made (the name is part of the fingerprint; data_dir is not)."""
  name = config.dataset.name
  input_pipeline.absolute(config)
  if recorded.get("dataset") == name:
    config.dataset.name = name


def _check_workdir_outside_data(config, workdir: str) -> None:
  """Refuses a work directory inside a folder data set: its folders (agent/, plots/...)
  would be read as a class of images, or as a split, once they exist."""
  data = input_pipeline.folder_holding(config, workdir)
  if data:
    raise store_lib.WorkdirError(
        f"{workdir} lies inside the data folder {data}, where its own folders would be "
        "read as images of a class; choose a work directory outside the data.")


def _keep_recorded_channels(config, recorded: dict) -> None:
  """Channels left to the data (0) resume as `recorded`: a folder of grey images with
  alpha was read as RGB before it was read as grey, and its search goes on in RGB."""
  channels = recorded.get("training", {}).get("dataset", {}).get("channels")
  if (str(config.dataset.name).startswith("folder:") and channels
      and recorded.get("dataset") == config.dataset.name
      and not int(config.dataset.get("channels", 0))):
    config.dataset.channels = int(channels)


def _keep_recorded_precision(config, recorded: dict) -> None:
  """A search recorded in float32 before `train.dtype` existed resumes in float32 when
  the precision is "auto" (on a GPU, auto would otherwise mean bfloat16: another search)."""
  train = recorded.get("training", {}).get("train", {})
  if train and "precision" not in train and str(config.train.get("dtype", "auto")) == "auto":
    config.train.dtype = "float32"


def _enable_compile_cache(path: str) -> None:
  """JAX's persistent compilation cache in `path`, for every program however quick to
  compile (a candidate's programs take seconds; autotuning results are kept with them)."""
  import jax
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"compile_cache_dir={path}: {e.strerror or e}") from None
  if not os.access(path, os.W_OK):
    raise UserError(f"compile_cache_dir={path} cannot be written")
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def check_config(config, schedule: agent_lib.Schedule, space) -> None:
  """Refuses, before anything is written, a search that cannot run or could never end."""
  from metaqnn import early_stop, finalize
  finalize.check_config(config)  # not only when the search has ended
  early_stop.check_config(config)  # with kind "none" too: a value set wrong is a mistake
  check_executor(config)
  if schedule.total < 1:
    raise UserError(f"the schedule {config.search.schedule!r} asks for 0 models; give at "
                     "least one, e.g. 1.0:20")
  n = space.count_architectures()
  if n < schedule.total:
    raise UserError(f"the search space holds {n} distinct architectures, but the schedule "
                     f"asks for {schedule.total} unique models; shorten search.schedule, or "
                     "enlarge config.space (in a new work directory: the space is recorded)")
  if space.unused_options().get("conv_kernels") == list(space.cfg.conv_kernels):
    print(f"warning: no convolution fits this space: every kernel of config.space."
          f"conv_kernels {tuple(space.cfg.conv_kernels)} is larger than the image side "
          f"{space.cfg.image_size} or its size bins", file=sys.stderr)
  if int(config.search.get("max_crashes", 2)) < 1:
    raise UserError(f"search.max_crashes must be >= 1, got {config.search.max_crashes}")
  for name, value in (("train.max_seconds", config.train.get("max_seconds", 0.0)),
                      ("ray.worker_timeout", config.ray.get("worker_timeout", 0.0))):
    if not float(value) >= 0:
      raise UserError(f"{name} must be >= 0 (0 = no limit), got {value}")


def _history(store) -> list[tuple[ModelRecord, int]]:
  """The record in order, each with the unique models counted after it (`Progress`)."""
  history, unique = [], 0
  for rec in store.models():
    unique += counts_toward_schedule(rec)
    history.append((rec, unique))
  return history


def _result(workdir, store, finished: bool) -> SearchResult:
  # Fully trained models only, as inspect and the final stage rank them (a stopped
  # model's accuracy is a prediction; a timed-out one's is partial).
  best = min((r for r in store.models() if r.status == "ok"), key=rank_key, default=None)
  return SearchResult(workdir=workdir, unique_models=store.unique_count(),
                      iterations=store.count(), best_arch=best.arch if best else None,
                      best_accuracy=best.accuracy if best else None, finished=finished)

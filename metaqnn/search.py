"""The MetaQNN search (SPEC section 1): sample, evaluate, record, learn; resumable.

    from metaqnn import search
    search.run_search(config, workdir, evaluate=lambda arch: my_accuracy(str(arch)))

Each iteration: the agent samples an architecture under the schedule's epsilon; one
trained before is not trained again (its stored reward is presented again); the model
is committed to the SQLite record; then the agent learns from it. The agent is
snapshotted now and then; on resume, records newer than the snapshot are replayed
through the agent (sampling is deterministic given the seed, so each replayed sample is
checked against the record). So a stop at any moment loses no trained model and trains
none twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional

from metaqnn import agent as agent_lib
from metaqnn import evaluators
from metaqnn import progress as progress_lib
from metaqnn import search_space
from metaqnn import store as store_lib
from metaqnn.store import ModelRecord, WorkdirError

AGENT_DIR = "agent"


@dataclasses.dataclass
class SearchResult:
  workdir: str
  unique_models: int
  iterations: int
  best_arch: Optional[str]
  best_accuracy: Optional[float]
  finished: bool


def fingerprint(config, evaluator_kind: str) -> dict:
  """What must match for a work directory to be resumed with `config`."""
  fp = {
      "dataset": config.dataset.name,
      "image_size": int(config.dataset.image_size),
      "num_classes": int(config.dataset.num_classes),
      "space": search_space.SpaceConfig.from_config(config).to_json(),
      "seed": int(config.seed),
      "agent": {k: float(v) for k, v in config.agent.items()},
      "evaluator": evaluator_kind,
  }
  if evaluator_kind == "train":  # rewards must come from one training procedure
    data = {k: v for k, v in config.dataset.to_dict().items()
            if k not in ("data_dir", "download")}
    fp["training"] = json.loads(json.dumps({"dataset": data, "train": config.train.to_dict()}))
  return fp


def restore_agent(agent: agent_lib.Agent, store: store_lib.Store, agent_dir: str,
                   replay_samples: int) -> None:
  """Brings the agent to the record's last iteration: snapshot, then replay the rest."""
  if os.path.exists(os.path.join(agent_dir, agent_lib.STATE_FILE)):
    try:
      agent.load(agent_dir)
    except (ValueError, KeyError, OSError) as e:
      raise WorkdirError(f"cannot restore the agent from {agent_dir}: {e}") from None
  if agent.iterations > store.count():
    raise WorkdirError(f"the agent snapshot in {agent_dir} is ahead of the record "
                       f"({agent.iterations} > {store.count()} models); the work "
                       "directory is inconsistent")
  for rec in store.models(after=agent.iterations - 1):
    path = agent.sample(rec.epsilon)
    if str(path.architecture) != rec.arch:
      raise WorkdirError(
          f"replaying the record diverged at iteration {rec.iteration} (sampled "
          f"{path.architecture}, recorded {rec.arch}); the record was not made by this "
          "configuration")
    agent.learn(rec.arch, rec.accuracy, new=not rec.resampled, replay_samples=replay_samples)


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
    max_models: stop after this many new iterations (for tests and time-boxed runs).
  """
  schedule = agent_lib.Schedule.parse(config.search.schedule)
  replay_samples = int(config.search.replay_samples)
  if replay_samples < 0:
    raise ValueError("search.replay_samples must be >= 0")
  space = search_space.from_config(config)
  kind = "function" if evaluate is not None else str(config.evaluator)
  if kind not in ("function", "train", "synthetic"):
    raise ValueError(f"unknown evaluator {kind!r}; use train or synthetic")
  store = store_lib.Store(workdir, fingerprint(config, kind))
  try:
    if "config" not in store.meta():
      store.set_meta("config", json.loads(config.to_json()))
    agent = agent_lib.Agent.from_config(space, config)
    agent_dir = os.path.join(workdir, AGENT_DIR)
    restore_agent(agent, store, agent_dir, replay_samples)
    if schedule.stage(agent.unique_models) is None:
      return _result(workdir, store, agent, finished=True)
    evaluate_fn = evaluators.from_config(config, evaluate)
    if log_interval is None:
      log_interval = 0.0 if kind == "train" else 1.0
    best = max((r.accuracy for r in store.models()), default=0.0)
    prog = progress_lib.Progress(
        schedule, best=best, log_interval=log_interval,
        tensorboard_dir=os.path.join(workdir, "tensorboard") if tensorboard else None)
    try:
      _loop(agent, store, schedule, evaluate_fn, prog, agent_dir, replay_samples, max_models)
    finally:
      prog.close()
      if agent.iterations == store.count():  # consistent: snapshot it (Ctrl-C included)
        agent.save(agent_dir)
    return _result(workdir, store, agent, finished=schedule.stage(agent.unique_models) is None)
  finally:
    store.close()


def _loop(agent, store, schedule, evaluate_fn, prog, agent_dir, replay_samples,
          max_models, snapshot_seconds: float = 10.0) -> None:
  last_snapshot = time.perf_counter()
  done = 0
  while (stage := schedule.stage(agent.unique_models)) is not None:
    if max_models is not None and done >= max_models:
      return
    epsilon = schedule.stages[stage][0]
    path = agent.sample(epsilon)
    arch = str(path.architecture)
    rec = ModelRecord(iteration=agent.iterations, arch=arch, accuracy=0.0,
                      epsilon=epsilon, stage=stage)
    prior = store.trained(arch)
    if prior is not None:  # SPEC section 1: not trained again, reward presented again
      rec.accuracy, rec.status, rec.resampled = prior.accuracy, prior.status, True
      rec.best_val_accuracy, rec.last_val_accuracy = prior.best_val_accuracy, prior.last_val_accuracy
      rec.params = prior.params
    else:
      out = evaluate_fn(path.architecture)
      for field in ("accuracy", "status", "message", "best_val_accuracy",
                    "last_val_accuracy", "restarts", "params", "seconds"):
        setattr(rec, field, getattr(out, field))
    rec.time = time.time()
    store.add(rec)  # durable before the agent learns from it
    agent.learn(arch, rec.accuracy, new=not rec.resampled, replay_samples=replay_samples)
    done += 1
    prog.update(rec, agent.unique_models)
    if time.perf_counter() - last_snapshot > snapshot_seconds:
      agent.save(agent_dir)
      last_snapshot = time.perf_counter()


def _result(workdir, store, agent, finished: bool) -> SearchResult:
  best = max(store.models(), key=lambda r: r.accuracy, default=None)
  return SearchResult(workdir=workdir, unique_models=agent.unique_models,
                      iterations=agent.iterations, best_arch=best.arch if best else None,
                      best_accuracy=best.accuracy if best else None, finished=finished)

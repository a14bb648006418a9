"""The tabular Q-learning agent of MetaQNN (SPEC section 1, paper Algorithms 2 and 3).

A NumPy Q-table over the enumerated `SearchSpace`, epsilon-greedy sampling with uniform
tie-breaking, a replay memory of (architecture, reward), and the reverse-order update.
All randomness comes from one seeded `numpy.random.Generator`, so a run is reproducible.
The whole agent saves to human-readable JSON plus a `.npz` Q-table (no pickle).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from typing import Optional

import numpy as np

from metaqnn import files
from metaqnn.architecture import Architecture
from metaqnn.search_space import Path, SearchSpace
from metaqnn.errors import UserError

STATE_FILE = "agent.json"
FORMAT = "metaqnn-agent/1"  # the snapshot's format, checked when it is read


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Epsilon stages, each a number of *unique* models: `1.0:1500,0.9:100,...`."""
  stages: tuple[tuple[float, int], ...]

  @classmethod
  def parse(cls, text: str) -> "Schedule":
    stages = []
    for part in str(text).replace(" ", "").split(","):
      try:
        eps, count = part.split(":")
        stage = (float(eps), int(count))
      except ValueError:
        raise UserError(f"bad epsilon schedule {text!r}: expected epsilon:count pairs "
                         "such as 1.0:1500,0.9:100") from None
      if not 0.0 < stage[0] <= 1.0 or stage[1] < 0:
        # epsilon 0 could re-sample one trained model forever: the stage would never end
        raise UserError(f"bad epsilon schedule {text!r}: epsilon must be in (0, 1] and "
                         "counts >= 0")
      stages.append(stage)
    return cls(tuple(stages))

  @property
  def total(self) -> int:
    return sum(n for _, n in self.stages)

  def stage(self, unique_models: int) -> Optional[int]:
    """Index of the stage that the next unique model belongs to; None when finished."""
    for i, (_, n) in enumerate(self.stages):
      if unique_models < n:
        return i
      unique_models -= n
    return None

  def __str__(self) -> str:
    return ",".join(f"{e:g}:{n}" for e, n in self.stages)


class Agent:
  """Q-learning over `space`; `sample`, then `learn` from each trained model's reward."""

  def __init__(self, space: SearchSpace, *, alpha: float = 0.01, gamma: float = 1.0,
               q_init: float = 0.5, seed: int = 0):
    if not 0.0 < alpha <= 1.0 or not 0.0 <= gamma <= 1.0:
      raise UserError(f"agent alpha must be in (0, 1] and gamma in [0, 1]; "
                       f"got alpha={alpha}, gamma={gamma}")
    if not math.isfinite(q_init):
      raise UserError(f"agent q_init must be a finite number; got {q_init}")
    self.space = space
    self.alpha, self.gamma, self.q_init = float(alpha), float(gamma), float(q_init)
    self.rng = np.random.default_rng(seed)
    # Q[s, a]; disallowed pairs hold -inf so that a row max is the max over allowed actions.
    self.q = np.where(space.allowed, self.q_init, -np.inf)
    self.replay: list[tuple[str, float]] = []
    self.unique_models = 0   # position in the epsilon schedule
    self.iterations = 0      # models learned from, re-samples included
    self.meta: dict = {}     # saved with the agent; the search keeps its position here
    self._paths: dict[str, Path] = {}
    # A `budget.Pruner`: masks the actions after which every completion is over budget.
    # It is a pure function of the config, so sampling and replay see the same masks.
    self.pruner = None

  @classmethod
  def from_config(cls, space: SearchSpace, config) -> "Agent":
    from metaqnn import budget  # pylint: disable=import-outside-toplevel
    a = config.agent
    agent = cls(space, alpha=a.alpha, gamma=a.gamma, q_init=a.q_init, seed=config.seed)
    agent.pruner = budget.pruner_for(space, config)
    return agent

  # -- acting --------------------------------------------------------------------------

  def _choose(self, state: int, epsilon: float, ids: Optional[np.ndarray] = None) -> int:
    """Epsilon-greedy over `ids` (default: the state's allowed actions)."""
    ids = self.space.allowed_ids[state] if ids is None else ids
    if self.rng.random() < epsilon:
      return int(ids[self.rng.integers(len(ids))])
    q = self.q[state, ids]
    best = ids[q == q.max()]
    return int(best[self.rng.integers(len(best))]) if len(best) > 1 else int(best[0])

  def sample(self, epsilon: float) -> Path:
    """One epsilon-greedy walk (Algorithm 2): random with probability epsilon per step;
    with a pruner, both the random and the greedy choice are among unmasked actions."""
    if self.pruner is None:
      path = self.space.walk(lambda s: self._choose(s, epsilon))
    else:
      path = self.pruner.walk(lambda s, ids: self._choose(s, epsilon, ids))
    self._paths.setdefault(str(path.architecture), path)
    return path

  # -- learning ------------------------------------------------------------------------

  def path(self, arch: Architecture | str) -> Path:
    key = str(arch)
    if key not in self._paths:
      self._paths[key] = self.space.path(arch)
    return self._paths[key]

  def update(self, path: Path, reward: float) -> None:
    """Algorithm 3: the last transition toward the reward, then backwards toward max Q."""
    q, alpha, gamma = self.q, self.alpha, self.gamma
    states, actions = path.states, path.actions
    target = reward
    for i in range(len(actions) - 1, -1, -1):
      s, a = states[i], actions[i]
      q[s, a] = (1.0 - alpha) * q[s, a] + alpha * target
      if i:
        target = gamma * q[s].max()

  def learn(self, arch: Architecture | str, reward: float, *, new: bool,
            replay_samples: int) -> None:
    """Stores (arch, reward) in replay memory, then replays K uniform samples.

    `new` says whether this was a newly trained model (it advances the schedule);
    a re-sampled model only goes into the replay memory again (SPEC section 1).
    """
    reward = float(reward)
    if not np.isfinite(reward):
      raise ValueError(f"reward must be a finite number, got {reward}")
    arch = str(arch)
    self.path(arch)  # validates: it must lie in the space
    self.replay.append((arch, reward))
    self.iterations += 1
    if new:
      self.unique_models += 1
    picks = self.rng.integers(len(self.replay), size=replay_samples)
    for i in picks:
      a, r = self.replay[i]
      self.update(self._paths[a], r)

  def fork(self) -> "Agent":
    """A copy to simulate on: Q-table, replay memory and random state copied, the space
    and the path cache shared. The search guesses its next sample with one."""
    ghost = copy.copy(self)
    ghost.q, ghost.replay = self.q.copy(), list(self.replay)
    ghost.rng, ghost.meta = copy.deepcopy(self.rng), {}
    return ghost

  # -- persistence ---------------------------------------------------------------------

  def state_dict(self) -> dict:
    return {
        "format": FORMAT,
        "alpha": self.alpha, "gamma": self.gamma, "q_init": self.q_init,
        "unique_models": self.unique_models,
        "iterations": self.iterations,
        "rng": self.rng.bit_generator.state,
        "replay": [[a, r] for a, r in self.replay],
        "meta": self.meta,
        "space": self.space.cfg.to_json(),
    }

  def save(self, directory: str) -> None:
    """Atomically saves to `directory`: agent.json points at a Q-table npz of the same step.

    The npz is written first under a step-numbered name, then agent.json is replaced
    atomically; a kill at any moment leaves the previous or the new agent, never a mix.
    """
    os.makedirs(directory, exist_ok=True)
    q_name = f"q-{self.iterations:08d}.npz"
    tmp = os.path.join(directory, q_name + ".tmp.npz")
    states = np.array([str(s) for s in self.space.states])
    actions = np.array([str(a) for a in self.space.actions])
    np.savez(tmp, q=self.q, allowed=self.space.allowed, states=states, actions=actions)
    os.replace(tmp, os.path.join(directory, q_name))
    meta = dict(self.state_dict(), q_file=q_name)
    files.write_json(os.path.join(directory, STATE_FILE), meta)
    for name in os.listdir(directory):  # older Q-tables are no longer referenced
      if name.startswith("q-") and name.endswith(".npz") and name != q_name:
        os.remove(os.path.join(directory, name))

  def load(self, directory: str) -> None:
    """Restores what `save` wrote; raises ValueError if it belongs to another space.

    All or nothing: whatever it raises on (a damaged file too), the agent is unchanged.
    """
    with open(os.path.join(directory, STATE_FILE)) as f:
      meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise ValueError(f"{directory} does not hold a metaqnn agent")
    if meta["space"] != self.space.cfg.to_json():
      raise ValueError(f"the agent in {directory} was made for another search space")
    with np.load(os.path.join(directory, meta["q_file"])) as z:
      q = z["q"]
    if q.shape != self.q.shape or not np.array_equal(np.isfinite(q), self.space.allowed):
      raise ValueError(f"the Q-table in {directory} does not match the search space")
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    replay = [(str(a), float(r)) for a, r in meta["replay"]]
    paths = {a: self.path(a) for a, _ in replay}  # each must lie in the space
    self.q, self.rng, self.replay = q, rng, replay
    self.alpha, self.gamma, self.q_init = meta["alpha"], meta["gamma"], meta["q_init"]
    self.unique_models, self.iterations = meta["unique_models"], meta["iterations"]
    self.meta = meta.get("meta", {})
    self._paths.update(paths)


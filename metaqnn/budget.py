"""Parameter and FLOP budgets: hard limits, exact pruning of the sampler, a soft reward.

`config.budget`:
  max_params, max_flops  hard limits (0 = none). An architecture over either is never
                         trained: it is recorded with status `over_budget` and the agent
                         learns `over_budget_reward` (default 0) from it.
  prune                  mask, while sampling, every action after which no completion of
                         the path can stay within a limit (default True).
  objective              "" (none), "params" or "flops": a soft, MnasNet-style reward
                         accuracy * (cost / target) ** weight, capped at 1, in place of the
                         accuracy, for a trade-off rather than a wall.
  target, weight         the cost the objective is centred on, and its exponent (< 0).

Which checks are exact, and when:
- Pruning (while sampling) is exact and never wrong: along a path the true side, the
  channels and the cost so far are known, and for every next action the cheapest
  completion is computed exactly (separately for params and for FLOPs), so an action is
  masked only if every architecture through it is over that limit. With one limit, every
  sampled architecture is therefore within it. With both, a path can fit each limit
  through a different completion but not both at once; such a sample is caught by the
  check after sampling (if every action at a step is masked, the sampler keeps those that
  pass at least one of the two limits).
- After sampling, every architecture's exact params and FLOPs are computed (the same
  counts as `models.layer_summary`) and checked against the limits before training.
- At the start, a search whose space holds nothing within a limit is refused, and so is
  one whose space holds fewer architectures within the limits than its schedule's unique
  models (exact count; it could only re-sample forever).

Quotas: an over-budget sample is recorded (status over_budget, the over-budget reward,
its params and FLOPs) but, never trained, does not count toward its stage's quota of
unique models, like a re-sample; a repeat of it is recorded as a re-sample. So a stage
ends after the same number of trained models with or without a budget.

Costs are computed here without JAX, in microseconds: the search loop checks each sample.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from metaqnn.errors import UserError
from metaqnn.architecture import FC, GAP, Architecture, Conv, Pool, Softmax, parse
from metaqnn.search_space import Path, SearchSpace

OBJECTIVES = ("", "params", "flops")
# The largest limit: costs are summed in int64 along paths, with room to spare; a limit
# this high already lets every architecture through.
NO_LIMIT = np.iinfo(np.int64).max // 4


class BudgetError(UserError):
  """A budget no architecture of the space can meet, or a bad budget setting (one line)."""


def check_config(config) -> None:
  """Refuses the soft objective's settings given without an objective: they would change
  nothing, silently (a forgotten `budget.objective`, most likely)."""
  b = config.get("budget", None)
  if b is None or b.get("objective", ""):
    return
  given = [f"config.budget.{k}={b.get(k)}" for k in ("target", "weight")
           if float(b.get(k, getattr(Budget, k))) != getattr(Budget, k)]
  if given:
    raise BudgetError(f"{' and '.join(given)} shape{'s' * (len(given) == 1)} the soft "
                      "objective only; set "
                      "config.budget.objective=params or flops too, or leave them unset")


@dataclasses.dataclass(frozen=True)
class Budget:
  """`config.budget`; all zero (the default) means no budget."""
  max_params: int = 0
  max_flops: int = 0
  over_budget_reward: float = 0.0
  prune: bool = True
  objective: str = ""
  target: float = 0.0
  weight: float = -0.07

  def __post_init__(self):
    if self.max_params < 0 or self.max_flops < 0:
      raise BudgetError("config.budget.max_params and max_flops must be >= 0 (0 = no limit)")
    if max(self.max_params, self.max_flops) > NO_LIMIT:  # the pruner's int64 sums
      raise BudgetError(f"config.budget.max_params and max_flops must be at most "
                        f"{NO_LIMIT:,} (0 = no limit)")
    if not np.isfinite(self.over_budget_reward) or self.over_budget_reward > 1:
      # Above 1, more than any accuracy: it would teach the agent to go over budget.
      raise BudgetError(f"config.budget.over_budget_reward={self.over_budget_reward} must "
                        "be a finite number <= 1 (rewards are accuracies; default 0)")
    if self.objective not in OBJECTIVES:
      raise BudgetError(f"config.budget.objective={self.objective!r} is unknown; use "
                        "'' (none), 'params' or 'flops'")
    if self.objective and not 0 < self.target < np.inf:
      raise BudgetError(f"config.budget.objective={self.objective!r} needs a finite "
                        "config.budget.target > 0 (the cost the reward is centred on)")
    if self.objective and not -10 <= self.weight < 0:
      # NaN made every reward 1 (min(1, nan)); a positive weight rewards bigger models;
      # below -10, halving the cost would multiply the reward by more than 1,000.
      raise BudgetError(f"config.budget.weight={self.weight} must be in [-10, 0) "
                        "(MnasNet's is -0.07)")

  @classmethod
  def from_config(cls, config) -> "Budget":
    """The budget of a run config; none for configs made before budgets existed."""
    b = config.get("budget", None) or {}
    # Each field as its type; a field the config lacks (made before it existed) as the
    # default above.
    return cls(**{f.name: type(f.default)(b[f.name])
                  for f in dataclasses.fields(cls) if f.name in b})

  def shaping(self) -> dict:
    """The settings that shape the rewards: the limits and the over-budget reward when a
    limit is set, the objective with its target and weight when one is."""
    out = {k: getattr(self, k) for k in ("max_params", "max_flops") if getattr(self, k)}
    if out:
      out["over_budget_reward"] = self.over_budget_reward
    if self.objective:
      out.update(objective=self.objective, target=self.target, weight=self.weight)
    return out

  @property
  def hard(self) -> bool:
    return bool(self.max_params or self.max_flops)

  @property
  def active(self) -> bool:
    return self.hard or bool(self.objective)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def over(self, params: int, flops: int) -> Optional[str]:
    """Why (params, flops) is over the hard limits, or None if within them."""
    why = []
    if self.max_params and params > self.max_params:
      why.append(f"{params:,} params > max_params {self.max_params:,}")
    if self.max_flops and flops > self.max_flops:
      why.append(f"{flops:,} FLOPs > max_flops {self.max_flops:,}")
    return "; ".join(why) or None

  def factor(self, params: int, flops: int) -> float:
    """What the soft objective multiplies the accuracy by: (cost / target)^weight (1
    without one)."""
    if not self.objective:
      return 1.0
    cost = max(params if self.objective == "params" else flops, 1)
    try:
      return float((cost / self.target) ** self.weight)
    except OverflowError:  # a cost far below the target: the reward is capped at 1 anyway
      return sys.float_info.max

  def reward(self, accuracy: float, params: int, flops: int) -> float:
    """The soft objective's reward for a trained model (the accuracy without one)."""
    if not self.objective:
      return accuracy
    return float(min(1.0, accuracy * self.factor(params, flops)))


# ---------------------------------------------------------------------------------------------
# Costs, layer by layer: the one place their formulas are written (models.layer_summary,
# which the Flax models are checked against, uses it too).


def layer_cost(layer, h: int, w: int, width: int, flat: bool) -> tuple[int, int, int, int,
                                                                         int, bool]:
  """(params, flops, h, w, width, flat) after `layer` on an h x w x width input (or
  `width` units when `flat`). GAP(k) includes its softmax; a softmax after GAP is left
  to the caller (it costs 0)."""
  if isinstance(layer, Conv):
    oh, ow = -(-h // layer.stride), -(-w // layer.stride)
    macs = layer.kernel ** 2 * width * layer.filters
    return macs + layer.filters, 2 * oh * ow * macs, oh, ow, layer.filters, False
  if isinstance(layer, Pool):
    out = lambda n: (n - layer.kernel) // layer.stride + 1
    return 0, 0, out(h), out(w), width, False
  if isinstance(layer, GAP):
    k = layer.classes
    return width * k + k, 2 * h * w * width * k, 1, 1, k, True
  units = layer.units if isinstance(layer, FC) else layer.classes
  fan_in = width if flat else h * w * width
  return fan_in * units + units, 2 * fan_in * units, h, w, units, True


def input_shape(config) -> tuple[int, int, int]:
  """(H, W, C) of the config's (resolved) data set."""
  d = config.dataset
  return (int(d.image_size), int(d.image_size), int(d.channels))


def cost(arch: Architecture | str, input_shape: Sequence[int]) -> tuple[int, int]:
  """(params, forward FLOPs per example) of `arch` on (H, W, C) inputs."""
  arch = parse(arch)
  h, w, width, flat = int(input_shape[0]), int(input_shape[1]), int(input_shape[2]), False
  params = flops = 0
  for i, layer in enumerate(arch.layers):
    if isinstance(layer, Softmax) and i and isinstance(arch.layers[i - 1], GAP):
      break
    p, f, h, w, width, flat = layer_cost(layer, h, w, width, flat)
    params, flops = params + p, flops + f
  return params, flops


# ---------------------------------------------------------------------------------------------
# Exact pruning.


class Pruner:
  """Masks, along a walk, the actions that cannot lead to an architecture within budget.

  A node is (state id, true side, width): width is the channel count (or the units after
  an FC), which the state key alone does not give after a pooling layer. For every node the
  cheapest completion in params and in FLOPs is computed exactly by recursion over the
  enumerated graph, memoised.
  """

  def __init__(self, space: SearchSpace, channels: int, budget: Budget):
    self.space, self.channels, self.budget = space, int(channels), budget
    self._min: dict = {}    # node -> (min params, min flops) to finish from it
    self._steps: dict = {}  # node -> (ids, params to finish, flops to finish, next nodes)
    self._layer_cost: dict = {}
    self.start = (0, space.cfg.image_size, self.channels)
    self.max_params = budget.max_params or NO_LIMIT
    self.max_flops = budget.max_flops or NO_LIMIT

  def _action(self, node, a):
    """(params, flops, next node or None) of action `a` from `node`."""
    key = (node, a)
    if key not in self._layer_cost:
      s, side, width = node
      flat = self.space.states[s].kind == "fc"
      p, f, _, _, nwidth, _ = layer_cost(self.space.actions[a], side, side, width, flat)
      nxt, nside = self.space.step(s, side, a)
      self._layer_cost[key] = (p, f, None if nxt is None else (nxt, nside, nwidth))
    return self._layer_cost[key]

  def minimum(self, node) -> tuple[int, int]:
    """The fewest params and the fewest FLOPs of any completion from `node` (each alone)."""
    if node not in self._min:
      _, p, f, _ = self.steps(node)
      self._min[node] = (int(p.min()), int(f.min()))
    return self._min[node]

  def steps(self, node):
    """Allowed action ids of `node`, each one's cheapest total params and FLOPs to finish
    through it, and its next nodes."""
    if node not in self._steps:
      ids = self.space.allowed_ids[node[0]]
      p = np.empty(len(ids), np.int64)
      f = np.empty(len(ids), np.int64)
      nexts = []
      for i, a in enumerate(ids):
        dp, df, nxt = self._action(node, int(a))
        mp, mf = (0, 0) if nxt is None else self.minimum(nxt)
        p[i], f[i] = dp + mp, df + mf
        nexts.append(nxt)
      self._steps[node] = (ids, p, f, nexts)
    return self._steps[node]

  def check_feasible(self) -> None:
    """BudgetError if no architecture of the space fits a limit (said at the start)."""
    p, f = self.minimum(self.start)
    b = self.budget
    if b.max_params and p > b.max_params:
      raise BudgetError(f"no architecture in this search space fits config.budget.max_params="
                        f"{b.max_params:,}: the smallest has {p:,} parameters")
    if b.max_flops and f > b.max_flops:
      raise BudgetError(f"no architecture in this search space fits config.budget.max_flops="
                        f"{b.max_flops:,}: the cheapest takes {f:,} FLOPs")

  def count_within(self, limit: int) -> int:
    """How many architectures fit both limits, counted exactly up to `limit` (a search
    needs as many as its schedule's unique models, or it would re-sample forever).

    A depth-first walk that enters only unmasked actions, so its work grows with the
    count, not with the space: with one limit every prefix it enters has a completion.
    """
    count = 0
    stack = [(self.start, 0, 0)]
    while stack and count < limit:
      node, params, flops = stack.pop()
      ids, p, f, nexts = self.steps(node)
      keep = np.flatnonzero((params + p <= self.max_params) & (flops + f <= self.max_flops))
      for i in keep:
        dp, df, nxt = self._action(node, int(ids[i]))
        if nxt is None:
          count += 1
        else:
          stack.append((nxt, params + dp, flops + df))
    return min(count, limit)

  def walk(self, choose: Callable[[int, np.ndarray], int]) -> Path:
    """A walk from the start; `choose(state, ids)` picks one of the unmasked `ids`."""
    states, actions = [0], []
    node, params, flops = self.start, 0, 0
    while True:
      ids, p, f, nexts = self.steps(node)
      fits_p = params + p <= self.max_params
      fits_f = flops + f <= self.max_flops
      keep = fits_p & fits_f
      if not keep.any():  # each limit fits through another completion: see module doc
        keep = fits_p | fits_f
        if not keep.any():
          keep = np.ones(len(ids), bool)
      a = choose(node[0], ids[keep])
      i = int(np.flatnonzero(ids == a)[0])
      dp, df, nxt = self._action(node, a)
      params, flops = params + dp, flops + df
      actions.append(a)
      if nxt is None:
        return Path(tuple(states), tuple(actions), self.space.architecture(actions))
      node = nexts[i]
      states.append(node[0])


def pruner_for(space: SearchSpace, config) -> Optional[Pruner]:
  """The pruner of a run config's budget, None without hard limits or with prune off."""
  b = Budget.from_config(config)
  if not (b.hard and b.prune):
    return None
  return Pruner(space, int(config.dataset.channels), b)


def check_space(space: SearchSpace, config, needed: int = 1) -> None:
  """BudgetError, at the start of a search, if no architecture fits the hard limits, or
  fewer than the `needed` unique models of its schedule (the search could not finish)."""
  b = Budget.from_config(config)
  if not b.hard:
    return
  pruner = Pruner(space, int(config.dataset.channels), b)
  pruner.check_feasible()
  found = pruner.count_within(needed)
  if found < needed:
    fit = ("only 1 architecture of this search space fits" if found == 1 else
           f"only {found} architectures of this search space fit")
    limits = ", ".join(f"{name}={value:,}" for name, value in (
        ("max_params", b.max_params), ("max_flops", b.max_flops)) if value)  # 0: none
    raise BudgetError(f"{fit} the budget ({limits}) but the "
                      f"schedule asks for {needed} unique models; raise the budget or "
                      "shorten config.search.schedule")

"""The MetaQNN state space (SPEC section 2), enumerated once into integer ids.

A state is a `State` tuple, its one canonical key: the same key is computed when the
agent samples and when it replays, because both go through `SearchSpace.step`. Actions
are the layers themselves (`Conv`, `Pool`, `FC`, and the terminations `GAP`, `Softmax`),
so an action sequence *is* an architecture. The agent sees only binned representation
sizes; the true side is tracked along every path, which makes pooling transitions
stochastic from the agent's point of view (paper, Figure A1).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from metaqnn import architecture as arch_lib
from metaqnn.architecture import FC, GAP, Architecture, ArchitectureError, Conv, Pool, Softmax
from metaqnn.errors import UserError

START, CONV, POOL, FCL = "start", "conv", "pool", "fc"
_KIND_ORDER = {START: 0, CONV: 1, POOL: 2, FCL: 3}
# The deepest space enumerated (the paper's reach 18): counting it takes about 4 s at
# 160 layers, and time grows faster than the depth (minutes at 1,000).
MAX_DEPTH = 100
# The most filters, units, or pixels of a kernel, pool or size bin a space may list.
MAX_WIDTH = 2**20


class State(NamedTuple):
  """Canonical state key.

  kind: start | conv | pool | fc; depth: number of layers so far; bin: representation-
  size bin (-1 for FC, whose successors do not depend on it); a, b: the layer's
  parameters (conv: filters, kernel; pool: kernel, stride; fc: units, consecutive FCs).
  """
  kind: str
  depth: int
  bin: int
  a: int = 0
  b: int = 0

  def __str__(self) -> str:
    if self.kind == START:
      return f"start(bin={self.bin})"
    if self.kind == CONV:
      return f"{self.depth}:C({self.a},{self.b},1)@bin{self.bin}"
    if self.kind == POOL:
      return f"{self.depth}:P({self.a},{self.b})@bin{self.bin}"
    return f"{self.depth}:FC({self.a})#{self.b}"


@dataclasses.dataclass(frozen=True)
class Path:
  """One walk: states[i] --actions[i]--> states[i+1]; the last action terminates."""
  states: tuple[int, ...]
  actions: tuple[int, ...]
  architecture: Architecture


@dataclasses.dataclass(frozen=True)
class SpaceConfig:
  """The limits of the space (config `space`), plus the input side and class count."""
  image_size: int
  num_classes: int
  max_depth: int = 12
  conv_filters: tuple[int, ...] = (64, 128, 256, 512)
  conv_kernels: tuple[int, ...] = (1, 3, 5)
  pools: tuple[tuple[int, int], ...] = ((5, 3), (3, 2), (2, 2))
  fc_units: tuple[int, ...] = (512, 256, 128)
  max_fc: int = 2
  size_bins: tuple[int, ...] = (8, 4, 1)
  fc_max_side: int = 7
  allow_gap: bool = True

  def __post_init__(self):
    def positive(name, values):
      if not values or any(not isinstance(v, int) or v < 1 for v in values):
        raise UserError(f"space.{name} must be a non-empty list of positive integers, "
                         f"got {values!r}")
      if max(values) > MAX_WIDTH:  # (a typo, whose parameter counts SQLite cannot hold)
        raise UserError(f"space.{name} holds {max(values)}; at most {MAX_WIDTH:,}")
    positive("conv_filters", self.conv_filters)
    positive("conv_kernels", self.conv_kernels)
    positive("fc_units", self.fc_units) if self.max_fc > 0 else None
    positive("size_bins", self.size_bins)
    if any(not isinstance(p, tuple) or len(p) != 2 for p in self.pools):
      raise UserError(f"space.pools must be (kernel, stride) pairs, got {self.pools!r}")
    for p in self.pools:
      positive("pools", p)
    if list(self.size_bins) != sorted(set(self.size_bins), reverse=True) or self.size_bins[-1] != 1:
      raise UserError("space.size_bins must be strictly decreasing lower bounds ending "
                       f"with 1, e.g. (8, 4, 1); got {self.size_bins!r}")
    if self.max_depth < 0 or self.max_fc < 0 or self.fc_max_side < 0:
      raise UserError("space.max_depth, space.max_fc and space.fc_max_side must be >= 0")
    if self.max_depth > MAX_DEPTH:  # the enumerated graph (and its counts) grow with it
      raise UserError(f"space.max_depth={self.max_depth} is more than {MAX_DEPTH}; the "
                      "paper's are 12 (MNIST, SVHN) and 18 (CIFAR-10)")
    if self.image_size < 1 or self.num_classes < 1:
      raise UserError("image_size and num_classes must be positive")

  @classmethod
  def from_config(cls, config) -> "SpaceConfig":
    """From a full run config (`config.space` plus `config.dataset` sizes).

    Empty `space.size_bins` (and `space.fc_max_side` 0) are derived from the image side
    (`derived_bins`), so that one config fits data of any size.
    """
    s = config.space
    side = int(config.dataset.image_size)
    if side < 1:
      raise ValueError("config.dataset.image_size is not set; it is taken from the data when "
                       "a search starts (input_pipeline.resolve)")
    bins = _wholes(s.size_bins) or derived_bins(side)
    fc_max_side = int(s.fc_max_side) or (bins[0] - 1 if isinstance(bins[0], int) else 0)
    return cls(
        image_size=side,
        num_classes=int(config.dataset.num_classes),
        max_depth=int(s.max_depth),
        conv_filters=_wholes(s.conv_filters),
        conv_kernels=_wholes(s.conv_kernels),
        pools=tuple(_wholes(p) if isinstance(p, (tuple, list)) else p for p in s.pools),
        fc_units=_wholes(s.fc_units),
        max_fc=int(s.max_fc),
        size_bins=bins,
        fc_max_side=fc_max_side,
        allow_gap=bool(s.allow_gap),
    )

  def to_json(self) -> dict:
    return {k: (list(map(list, v)) if k == "pools" else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()}


def _wholes(values) -> tuple:
  """A space field's values as ints where they are whole numbers (16, 16.0), each other
  one as given, for `SpaceConfig`'s check to name: "abc" or 16.5 is refused, not read
  as something else."""
  def whole(v):
    try:
      return int(float(v)) if not isinstance(v, bool) and float(v).is_integer() else v
    except (TypeError, ValueError):
      return v
  if isinstance(values, str):  # an override ml_collections could not read as a tuple
    return (values,)
  return tuple(whole(v) for v in values)


def derived_bins(side: int) -> tuple[int, ...]:
  """Size-bin lower bounds for an image side: (b, b/2, 1) with b = min(8, ceil(side / 2)).

  This gives the paper's (8, 4, 1) for 28 and 32 pixels and the digits config's (4, 2, 1)
  for 8; with fc_max_side = b - 1, FC is allowed in every bin but the largest, as in both.
  """
  b = max(2, min(8, -(-side // 2)))
  return tuple(sorted({b, max(2, b // 2), 1}, reverse=True))


class SearchSpace:
  """Explicit graph of states and allowed actions with integer ids.

  Attributes:
    states: list of `State`, indexed by state id (start is id 0).
    actions: list of layers, indexed by action id; GAP and SM actions terminate.
    allowed: bool array [num_states, num_actions].
    allowed_ids: per state, the int array of its allowed action ids.
  """

  def __init__(self, cfg: SpaceConfig):
    self.cfg = cfg
    k = cfg.num_classes
    actions: list = [Conv(d, f, 1) for d in cfg.conv_filters for f in cfg.conv_kernels]
    actions += [Pool(f, l) for f, l in cfg.pools]
    actions += [FC(d) for d in cfg.fc_units] if cfg.max_fc > 0 else []
    actions += ([GAP(k)] if cfg.allow_gap else []) + [Softmax(k)]
    self.actions = actions
    self.action_index = {a: i for i, a in enumerate(actions)}
    self._completion_counts: Optional[dict] = None
    self._uniform_p: dict = {}  # (state id, true side) -> uniform_path's probabilities
    self._enumerate()

  # -- rules -------------------------------------------------------------------------

  def bin_of(self, side: int) -> int:
    """Index of the representation-size bin holding `side` (bins are lower bounds)."""
    for i, low in enumerate(self.cfg.size_bins):
      if side >= low:
        return i
    raise ValueError(f"representation size {side} is below every bin")

  def _bin_fits(self, b: int, f: int) -> bool:
    """A window f is allowed if it fits every side the bin can hold."""
    return f <= self.cfg.size_bins[b]

  def _bin_allows_fc(self, b: int) -> bool:
    return b > 0 and self.cfg.size_bins[b - 1] - 1 <= self.cfg.fc_max_side

  def _legal(self, s: State, a) -> bool:
    """Transition rules of SPEC section 2 for state key `s` and action (a layer) `a`."""
    cfg = self.cfg
    if isinstance(a, Softmax):
      return True
    if isinstance(a, GAP):
      return s.kind != FCL
    if s.depth >= cfg.max_depth:
      return False
    if isinstance(a, FC):
      if s.kind == FCL:
        return s.b < cfg.max_fc and a.units <= s.a
      return self._bin_allows_fc(s.bin)
    if s.kind == FCL:
      return False
    if isinstance(a, Conv):
      return self._bin_fits(s.bin, a.kernel)
    if isinstance(a, Pool):
      return s.kind == CONV and self._bin_fits(s.bin, a.kernel)
    raise TypeError(f"not an action: {a!r}")

  def _next(self, s: State, side: int, a) -> tuple[State, int]:
    """Successor key and true side of a non-terminal action."""
    depth = s.depth + 1
    if isinstance(a, Conv):
      return State(CONV, depth, self.bin_of(side), a.filters, a.kernel), side
    if isinstance(a, Pool):
      new = (side - a.kernel) // a.stride + 1
      return State(POOL, depth, self.bin_of(new), a.kernel, a.stride), new
    consecutive = s.b + 1 if s.kind == FCL else 1
    return State(FCL, depth, -1, a.units, consecutive), side

  # -- enumeration ---------------------------------------------------------------------

  def _enumerate(self) -> None:
    cfg = self.cfg
    start = State(START, 0, self.bin_of(cfg.image_size))
    nodes = {(start, cfg.image_size)}
    frontier = [(start, cfg.image_size)]
    edges = {}  # (state, side, action index) -> (state, side)
    while frontier:
      s, side = frontier.pop()
      for ai, a in enumerate(self.actions):
        if isinstance(a, (GAP, Softmax)) or not self._legal(s, a):
          continue
        nxt = self._next(s, side, a)
        edges[(s, side, ai)] = nxt
        if nxt not in nodes:
          nodes.add(nxt)
          frontier.append(nxt)
    keys = sorted({s for s, _ in nodes},
                  key=lambda s: (s.depth, _KIND_ORDER[s.kind], s.bin, -s.a, s.b))
    assert keys[0] == start
    self.states = keys
    self.state_index = {s: i for i, s in enumerate(keys)}
    self.allowed = np.array([[self._legal(s, a) for a in self.actions] for s in keys], bool)
    self.allowed_ids = [np.flatnonzero(row) for row in self.allowed]
    self.terminal = np.array([isinstance(a, (GAP, Softmax)) for a in self.actions])
    # (state id, true side, action id) -> (next state id, next side)
    self._edges = {(self.state_index[s], side, ai): (self.state_index[n], nside)
                   for (s, side, ai), (n, nside) in edges.items()}
    self._nodes = {(self.state_index[s], side) for s, side in nodes}

  # -- walking -------------------------------------------------------------------------

  @property
  def num_states(self) -> int:
    return len(self.states)

  @property
  def num_actions(self) -> int:
    return len(self.actions)

  def step(self, state: int, side: int, action: int) -> tuple[Optional[int], int]:
    """Takes an allowed action; returns (next state id or None if terminal, true side)."""
    if self.terminal[action]:
      return None, side
    return self._edges[(state, side, action)]

  def walk(self, choose: Callable[[int], int]) -> Path:
    """Walks from the start; `choose(state_id)` returns an allowed action id."""
    return self._walk(lambda state, side: choose(state))

  def _walk(self, choose: Callable[[int, int], int]) -> Path:
    """Walks from the start; `choose(state_id, true side)` returns an allowed action id."""
    states, actions = [0], []
    side = self.cfg.image_size
    while True:
      a = choose(states[-1], side)
      actions.append(a)
      nxt, side = self.step(states[-1], side, a)
      if nxt is None:
        return Path(tuple(states), tuple(actions), self.architecture(actions))
      states.append(nxt)

  def architecture(self, actions: Sequence[int]) -> Architecture:
    """The architecture an action sequence spells (GAP(k) expands to GAP(k), SM(k))."""
    layers = [self.actions[a] for a in actions]
    if isinstance(layers[-1], GAP):
      layers.append(Softmax(self.cfg.num_classes))
    return Architecture(tuple(layers))

  def path(self, arch: Architecture | str) -> Path:
    """The state/action path of an architecture; `ArchitectureError` if outside the space."""
    arch = arch_lib.parse(arch)
    layers = list(arch.layers)
    if len(layers) >= 2 and isinstance(layers[-2], GAP):
      layers = layers[:-1]
    if arch.num_classes != self.cfg.num_classes:
      raise ArchitectureError(
          f"{arch} has {arch.num_classes} classes; this space has {self.cfg.num_classes}")
    states, actions = [0], []
    side = self.cfg.image_size
    for i, layer in enumerate(layers):
      ai = self.action_index.get(layer)
      s = states[-1]
      if ai is None or not self.allowed[s, ai]:
        why = ("is not one of this space's layer choices" if ai is None
               else f"is not allowed in state {self.states[s]}")
        raise ArchitectureError(f"{arch} is outside the search space: layer {i + 1} "
                                f"({layer}) {why}")
      actions.append(ai)
      nxt, side = self.step(s, side, ai)
      if nxt is None:
        if i != len(layers) - 1:  # pragma: no cover - Architecture forbids it
          raise ArchitectureError(f"{arch}: layers after termination")
        return Path(tuple(states), tuple(actions), arch)
      states.append(nxt)
    raise ArchitectureError(f"{arch} does not terminate")  # pragma: no cover

  def _completions(self) -> dict:
    """(state id, true side) -> how many architectures finish from that node (exact)."""
    if self._completion_counts is None:
      memo: dict = {}
      order = sorted(self._nodes, key=lambda n: -self.states[n[0]].depth)
      for s, side in order:  # deepest first: successors are already counted
        memo[(s, side)] = sum(1 if self.terminal[a] else memo[self._edges[(s, side, a)]]
                              for a in self.allowed_ids[s])
      self._completion_counts = memo
    return self._completion_counts

  def uniform_path(self, rng: np.random.Generator) -> Path:
    """An architecture drawn uniformly from all of the space's architectures.

    Not the agent's epsilon-1 walk, which picks each allowed action uniformly and so
    favours short networks (a termination is one of a handful of choices at every step);
    here each action is weighted by the number of architectures through it. For random
    search baselines and for percentiles over the space.
    """
    counts, cache = self._completions(), self._uniform_p

    def choose(state: int, side: int) -> int:
      ids = self.allowed_ids[state]
      if (state, side) not in cache:
        weights = np.array([1 if self.terminal[a] else counts[self._edges[(state, side, a)]]
                            for a in ids], float)
        cache[(state, side)] = weights / weights.sum()
      return int(rng.choice(ids, p=cache[(state, side)]))

    return self._walk(choose)

  # -- statistics ----------------------------------------------------------------------

  def count_architectures(self) -> int:
    """Exact number of distinct architectures (paths) for this input size."""
    return self._completions()[(0, self.cfg.image_size)]

  def unused_options(self) -> dict:
    """The kernels and pools of the config that no allowed action takes (a kernel larger
    than every size bin), by field."""
    used = [self.actions[a] for a in np.flatnonzero(self.allowed.any(axis=0))]
    out = {"conv_kernels": [k for k in self.cfg.conv_kernels
                            if not any(isinstance(a, Conv) and a.kernel == k for a in used)],
           "pools": [list(p) for p in self.cfg.pools
                     if not any(isinstance(a, Pool) and (a.kernel, a.stride) == tuple(p)
                                for a in used)]}
    return {k: v for k, v in out.items() if v}

  def stats(self) -> dict:
    """A summary of the space for a researcher (the `space stats` command)."""
    by_kind = collections.Counter(s.kind for s in self.states)
    by_depth = collections.Counter(s.depth for s in self.states)
    pairs_by_kind = collections.Counter()
    for s, row in zip(self.states, self.allowed):
      pairs_by_kind[s.kind] += int(row.sum())
    stochastic = sum(
        1 for s in range(self.num_states) for a in self.allowed_ids[s] if not self.terminal[a]
        and len({self._edges[(s, side, a)][0] for (t, side) in self._nodes if t == s}) > 1)
    return {
        "num_states": self.num_states,
        "num_state_actions": int(self.allowed.sum()),
        "num_actions": self.num_actions,
        "num_architectures": self.count_architectures(),
        "states_by_type": {k: by_kind[k] for k in (START, CONV, POOL, FCL)},
        "state_actions_by_type": {k: pairs_by_kind[k] for k in (START, CONV, POOL, FCL)},
        "states_by_depth": {str(d): by_depth[d] for d in sorted(by_depth)},
        "stochastic_state_actions": stochastic,
        "true_side_nodes": len(self._nodes),
        # Options of the config that no allowed action takes (5x5 kernels where every
        # size bin is 4 or less): listed, but never in an architecture.
        "unused_options": self.unused_options(),
        "config": self.cfg.to_json(),
        "definitions": ("states: non-terminal states incl. start; state-actions: allowed "
                        "(state, action) pairs incl. terminations (SM, GAP)"),
    }


def from_config(config) -> SearchSpace:
  """The space of a run config (`configs/*.py`)."""
  return SearchSpace(SpaceConfig.from_config(config))

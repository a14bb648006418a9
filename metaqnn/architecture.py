"""The paper's architecture notation: `[C(128,3,1), P(2,2), FC(512), SM(10)]`.

An `Architecture` is an immutable tuple of layers. `parse` reads the notation and
`str()` writes it back canonically (one comma and one space between layers), so that
`str(parse(s))` is the canonical form of `s`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator, Union

from metaqnn.errors import UserError


class ArchitectureError(UserError):
  """A malformed or structurally invalid architecture string."""


@dataclasses.dataclass(frozen=True)
class Conv:
  """C(d, f, l): `filters` d, square receptive field f, stride l; SAME padding, ReLU."""
  filters: int
  kernel: int
  stride: int = 1

  def __str__(self) -> str:
    return f"C({self.filters},{self.kernel},{self.stride})"


@dataclasses.dataclass(frozen=True)
class Pool:
  """P(f, l): max pooling, square window f, stride l, VALID padding."""
  kernel: int
  stride: int

  def __str__(self) -> str:
    return f"P({self.kernel},{self.stride})"


@dataclasses.dataclass(frozen=True)
class FC:
  """FC(d): dense layer with d units, then ReLU."""
  units: int

  def __str__(self) -> str:
    return f"FC({self.units})"


@dataclasses.dataclass(frozen=True)
class GAP:
  """GAP(k): 1x1 convolution to k channels, then global average pooling (the logits)."""
  classes: int

  def __str__(self) -> str:
    return f"GAP({self.classes})"


@dataclasses.dataclass(frozen=True)
class Softmax:
  """SM(k): the classifier over k classes (after GAP it only names the softmax)."""
  classes: int

  def __str__(self) -> str:
    return f"SM({self.classes})"


Layer = Union[Conv, Pool, FC, GAP, Softmax]

# name -> (layer class, number of arguments)
_LAYERS = {"C": (Conv, 3), "P": (Pool, 2), "FC": (FC, 1), "GAP": (GAP, 1), "SM": (Softmax, 1)}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A CNN in the paper's notation: hidden layers, optionally GAP, then SM."""
  layers: tuple[Layer, ...]

  def __post_init__(self):
    _check_structure(self.layers)

  def __str__(self) -> str:
    return "[" + ", ".join(str(l) for l in self.layers) + "]"

  def __iter__(self) -> Iterator[Layer]:
    return iter(self.layers)

  def __len__(self) -> int:
    return len(self.layers)

  @property
  def num_classes(self) -> int:
    return self.layers[-1].classes

  @property
  def hidden(self) -> tuple[Layer, ...]:
    """The layers before termination (no GAP, no SM)."""
    return tuple(l for l in self.layers if not isinstance(l, (GAP, Softmax)))

  @property
  def terminal(self) -> Union[GAP, Softmax]:
    """GAP(k) if the network ends with global average pooling, else SM(k)."""
    if len(self.layers) >= 2 and isinstance(self.layers[-2], GAP):
      return self.layers[-2]
    return self.layers[-1]


def _check_structure(layers: tuple[Layer, ...]) -> None:
  """Termination rules of the notation: exactly one SM, last; GAP only right before it."""
  if not layers or not isinstance(layers[-1], Softmax):
    raise ArchitectureError("an architecture must end with SM(k)")
  for i, layer in enumerate(layers):
    if not isinstance(layer, (Conv, Pool, FC, GAP, Softmax)):
      raise ArchitectureError(f"layer {i + 1} is not a layer: {layer!r}")
    for field in dataclasses.fields(layer):
      value = getattr(layer, field.name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArchitectureError(
            f"layer {i + 1} ({layer}): {field.name} must be a positive integer")
    if isinstance(layer, Softmax) and i != len(layers) - 1:
      raise ArchitectureError(f"layer {i + 1} ({layer}): SM must be the last layer")
    if isinstance(layer, GAP):
      if i != len(layers) - 2:
        raise ArchitectureError(f"layer {i + 1} ({layer}): GAP must come right before SM")
      if layer.classes != layers[-1].classes:
        raise ArchitectureError(
            f"layer {i + 1} ({layer}): GAP and SM must have the same number of classes")
      if i > 0 and isinstance(layers[i - 1], FC):
        raise ArchitectureError(f"layer {i + 1} ({layer}): GAP cannot follow an FC layer")
  for i in range(1, len(layers)):
    if isinstance(layers[i - 1], FC) and isinstance(layers[i], (Conv, Pool)):
      raise ArchitectureError(
          f"layer {i + 1} ({layers[i]}): a convolution or pooling layer cannot follow FC")


# ASCII digits only: \d would take other scripts' digits ("٣") and read them as 3.
_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z]+)|(?P<int>[0-9]+)|(?P<punct>[\[\](),]))")


def parse(text: str | Architecture) -> Architecture:
  """Parses the paper's notation; raises `ArchitectureError` naming position and expectation.
  An `Architecture` is returned as it is (callers take either)."""
  if isinstance(text, Architecture):
    return text
  if not isinstance(text, str):
    raise ArchitectureError(f"expected an architecture string, got {type(text).__name__}")
  pos = 0

  def error(expected: str, at: int) -> ArchitectureError:
    found = repr(text[at]) if at < len(text) else "end of input"
    return ArchitectureError(
        f"malformed architecture at position {at}: expected {expected}, found {found} "
        f"in {text!r}")

  def next_token(expected: str) -> tuple[str, str, int]:
    nonlocal pos
    m = _TOKEN.match(text, pos)
    if not m:
      at = pos + len(text[pos:]) - len(text[pos:].lstrip())
      raise error(expected, at)
    pos = m.end()
    kind = m.lastgroup
    return kind, m.group(kind), m.start(kind)

  def expect(punct: str, expected: str) -> None:
    kind, value, at = next_token(expected)
    if kind != "punct" or value != punct:
      raise error(expected, at)

  expect("[", "'['")
  layers = []
  while True:
    kind, name, at = next_token("a layer (C, P, FC, GAP or SM)")
    if kind != "name" or name.upper() not in _LAYERS:
      raise error("a layer (C, P, FC, GAP or SM)", at)
    cls, arity = _LAYERS[name.upper()]
    expect("(", f"'(' after {name}")
    args = []
    for j in range(arity):
      kind, value, vat = next_token("an integer")
      if kind != "int":
        raise error(f"an integer (argument {j + 1} of {name})", vat)
      args.append(int(value))
      if j < arity - 1:
        expect(",", f"',' ({name} takes {arity} arguments)")
    expect(")", f"')' ({name} takes {arity} argument{'s' if arity > 1 else ''})")
    try:
      layers.append(cls(*args))
    except TypeError as e:  # pragma: no cover - arity is checked above
      raise error(str(e), at) from None
    kind, value, at = next_token("',' or ']'")
    if kind == "punct" and value == "]":
      break
    if kind != "punct" or value != ",":
      raise error("',' or ']'", at)
  if text[pos:].strip():
    raise error("end of input after ']'", pos + len(text[pos:]) - len(text[pos:].lstrip()))
  try:
    return Architecture(tuple(layers))
  except ArchitectureError as e:
    raise ArchitectureError(f"{e} in {text!r}") from None

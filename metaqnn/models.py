"""The network of an `Architecture` (SPEC section 3): a Flax module, its shapes, params, FLOPs.

Layer semantics:
  C(d,f,l)  convolution, SAME padding, stride l, then ReLU.
  P(f,l)    max pooling, VALID padding.
  FC(d)     flatten if needed, dense, ReLU.
  GAP(k)    1x1 convolution to k channels, then the spatial mean: the logits.
  SM(k)     flatten if needed, dense to k logits; after GAP(k) it adds nothing.

Dropout: the hidden layers (C, P and FC; not GAP or SM) are counted from the input, and a
dropout follows every second one (hidden layers 2, 4, 6, ...). With n such dropouts the i-th
(from the input) has rate i / (2n), so the last one has rate 0.5.

Convolutions (`conv_same`, SAME padding, side ceil(n / l) for stride l) come in two forms
that compute the same thing, chosen by backend (`conv_impl`):
- "native" (GPU, TPU): XLA's own convolution and gradient, strided natively.
- "canonical" (CPU): a stride-1 convolution whose gradient is written as canonical
  NHWC/HWIO convolutions, subsampled for l > 1. XLA:CPU rewrites other convolution
  layouts into that form only in a program's top level, so the gradient convolutions
  inside the training `lax.scan` otherwise run as naive loops, 30-45x slower. On a GPU
  this form only adds compile time (2-4 s per candidate on an H200, as issue 9 measured).

Precision: parameters are float32; `CNN(dtype=jnp.bfloat16)` computes in bfloat16 (mixed
precision) and returns float32 logits.

Initialisation: kernels Glorot (Xavier) uniform with fan_in = kh*kw*in and
fan_out = kh*kw*out, biases zero. `init_params` does it with NumPy on the host from
`jax.eval_shape` shapes, so no compiled init runs per candidate.

FLOPs convention: forward pass, per example, 2 x the multiply-adds of convolutions
(GAP's 1x1 included) and dense layers. Bias adds, ReLU, pooling, dropout and the
global mean are not counted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metaqnn import budget
from metaqnn.architecture import (FC, GAP, Architecture, ArchitectureError, Conv, Layer, Pool,
                                  Softmax)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """One layer of a network on a given input: its output shape, parameters and FLOPs."""
  name: str
  layer: Layer
  output_shape: tuple[int, ...]  # Per example: (H, W, C) or (units,).
  params: int
  flops: int
  dropout: float  # Rate of the dropout that follows this layer; 0.0 = none.

  def to_json(self) -> dict:
    return dict(name=self.name, layer=str(self.layer), output_shape=list(self.output_shape),
                params=self.params, flops=self.flops, dropout=self.dropout)


def layer_name(index: int, layer: Layer) -> str:
  """The Flax submodule name of the `index`-th layer (0-based): 'conv1', 'pool2', 'gap5'..."""
  kind = {Conv: "conv", Pool: "pool", FC: "fc", GAP: "gap"}.get(type(layer), "logits")
  return f"{kind}{index + 1}"


def dropout_rates(arch: Architecture) -> tuple[float, ...]:
  """Per layer of `arch`, the rate of the dropout after it (0.0 where there is none)."""
  hidden = [i for i, l in enumerate(arch.layers) if isinstance(l, (Conv, Pool, FC))]
  after = hidden[1::2]
  rates = [0.0] * len(arch.layers)
  for j, i in enumerate(after):
    rates[i] = (j + 1) / (2 * len(after))
  return tuple(rates)


def layer_summary(arch: Architecture, input_shape: Sequence[int]) -> list[LayerInfo]:
  """Shapes, params and FLOPs layer by layer; `ArchitectureError` if `arch` does not fit.

  `input_shape` is (H, W, C) of one example. A convolution or pooling window larger than
  its feature map, or a final SM(k) whose k differs from the data's classes (checked by the
  callers that know them), is an error rather than a degenerate network.
  """
  if len(input_shape) != 3 or min(input_shape) < 1:
    raise ArchitectureError(f"input shape must be (height, width, channels), got {input_shape}")
  h, w, c = (int(v) for v in input_shape)
  flat = False  # True once the representation is flat (c then counts its units)
  rates = dropout_rates(arch)
  infos = []
  for i, layer in enumerate(arch.layers):
    where = f"layer {i + 1} ({layer}) of {arch}"
    if isinstance(layer, (Conv, Pool)) and layer.kernel > min(h, w):
      raise ArchitectureError(
          f"{where}: window {layer.kernel}x{layer.kernel} is larger than its {h}x{w} input")
    if isinstance(layer, Softmax) and isinstance(arch.terminal, GAP):
      params, flops = 0, 0  # SM after GAP only names the softmax
    else:
      params, flops, h, w, c, flat = budget.layer_cost(layer, h, w, c, flat)
    shape = (c,) if flat else (h, w, c)
    infos.append(LayerInfo(layer_name(i, layer), layer, shape, params, flops, rates[i]))
  return infos


def count_params(arch: Architecture, input_shape: Sequence[int]) -> int:
  """Real trainable parameters (weights and biases of every layer) on this input."""
  return sum(info.params for info in layer_summary(arch, input_shape))


def flops_per_example(arch: Architecture, input_shape: Sequence[int]) -> int:
  """Forward FLOPs per example (2 x multiply-adds; see the module docstring)."""
  return sum(info.flops for info in layer_summary(arch, input_shape))


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of XLA's SAME convolution: output side ceil(size / stride)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_canonical(x: jax.Array, kernel: jax.Array, pads: tuple[tuple[int, int], ...]
                   ) -> jax.Array:
  """Stride-1 convolution, NHWC input, HWIO kernel, explicit `pads`; its gradient is
  stated as canonical NHWC/HWIO convolutions (see the module docstring: XLA:CPU)."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_NHWC)


def _conv_canonical_fwd(x, kernel, pads):
  return conv_canonical(x, kernel, pads), (x, kernel)


def _conv_canonical_bwd(pads, residuals, dy):
  """dx: dy convolved with the flipped, transposed kernel; dkernel: x and dy swapped into
  the batch/feature roles of a canonical convolution, then transposed back."""
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  (top, _), (left, _) = pads
  # The transposed convolution's padding: the stride-1 output is x's side + pads - k + 1.
  out_h, out_w = dy.shape[1:3]
  dx_pads = [(kh - 1 - top, x.shape[1] - out_h + top),
             (kw - 1 - left, x.shape[2] - out_w + left)]
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2).astype(dy.dtype)
  dx = jax.lax.conv_general_dilated(dy, flipped, (1, 1), dx_pads, dimension_numbers=_NHWC)
  dkernel = jax.lax.conv_general_dilated(
      x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1),
      [(top, out_h - x.shape[1] + kh - 1 - top), (left, out_w - x.shape[2] + kw - 1 - left)],
      dimension_numbers=_NHWC)
  return dx.astype(x.dtype), dkernel.transpose(1, 2, 0, 3).astype(kernel.dtype)


conv_canonical.defvjp(_conv_canonical_fwd, _conv_canonical_bwd)


def conv_same(x: jax.Array, kernel: jax.Array, stride: int = 1, impl: str = "native"
              ) -> jax.Array:
  """SAME convolution with stride `stride` (side ceil(n / stride)), NHWC/HWIO.

  impl "native": XLA's own convolution and gradient, strided natively (GPU, TPU).
  impl "canonical": the XLA:CPU form, a stride-1 `conv_canonical` with the same padding
  as "native", subsampled; both give the same outputs and gradients.
  """
  k = kernel.shape[0]
  pads = tuple(same_pads(n, k, stride) for n in x.shape[1:3])
  if impl == "native":
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                        dimension_numbers=_NHWC)
  if impl != "canonical":
    raise ValueError(f"unknown convolution {impl!r}; use native or canonical")
  # With SAME's padding, the stride-1 output's positions 0, s, 2s, ... are the strided
  # output, and there are exactly ceil(n / s) of them.
  y = conv_canonical(x, kernel, pads)
  return y[:, ::stride, ::stride] if stride > 1 else y


def conv_impl(platform: str) -> str:
  """The convolution that pays on `platform`: XLA's own everywhere except on CPU."""
  return "canonical" if platform == "cpu" else "native"


class Conv2D(nn.Module):
  """Square SAME convolution plus bias, computed in `dtype` from float32 parameters."""
  features: int
  kernel: int
  stride: int = 1
  dtype: Any = jnp.float32
  impl: str = "native"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.glorot_uniform(),
                        (self.kernel, self.kernel, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = conv_same(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.impl)
    return y + bias.astype(self.dtype)


def _dropout(x: jax.Array, bits: jax.Array, rate: float) -> jax.Array:
  """Inverted dropout: zero where the uint32 `bits` fall below `rate` * 2**32."""
  keep = bits >= np.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class CNN(nn.Module):
  """The network of `arch` on NHWC float inputs; returns float32 logits [N, classes].

  Computation runs in `dtype` (bfloat16 for mixed precision) from float32 parameters;
  the classifier (SM's dense layer), the global mean of GAP and the logits are float32.
  `conv` picks the convolution (`conv_impl`). With `train=True` it needs a 'dropout' rng. The random bits of all
  dropout layers are drawn in one call: one random-number kernel per program compiles
  much faster than one per layer.
  """
  arch: Architecture
  dropout: bool = True
  dtype: Any = jnp.float32
  conv: str = "native"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    rates = dropout_rates(self.arch) if self.dropout else (0.0,) * len(self.arch.layers)
    sizes = [math.prod(info.output_shape) if rate else 0
             for info, rate in zip(layer_summary(self.arch, x.shape[1:]), rates)]
    bits = None
    if train and sum(sizes):
      bits = jax.random.bits(self.make_rng("dropout"), (x.shape[0], sum(sizes)), jnp.uint32)
    x = x.astype(self.dtype)
    conv = functools.partial(Conv2D, dtype=self.dtype, impl=self.conv)
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    offset = 0
    for i, layer in enumerate(self.arch.layers):
      name = layer_name(i, layer)
      if isinstance(layer, Conv):
        x = nn.relu(conv(layer.filters, layer.kernel, layer.stride, name=name)(x))
      elif isinstance(layer, Pool):
        x = nn.max_pool(x, (layer.kernel, layer.kernel), (layer.stride, layer.stride),
                        padding="VALID")
      elif isinstance(layer, GAP):
        x = jnp.mean(conv(layer.classes, 1, name=name)(x).astype(jnp.float32), axis=(1, 2))
      elif isinstance(layer, FC):
        x = nn.relu(dense(layer.units, name=name)(x.reshape(x.shape[0], -1)))
      elif not isinstance(self.arch.terminal, GAP):  # the classifier: float32 logits
        x = nn.Dense(layer.classes, name=name)(x.reshape(x.shape[0], -1).astype(jnp.float32))
      if bits is not None and sizes[i]:
        x = _dropout(x, bits[:, offset:offset + sizes[i]].reshape(x.shape), rates[i])
        offset += sizes[i]
    return x.astype(jnp.float32)


def param_shapes(model: CNN, input_shape: Sequence[int]) -> Any:
  """The params tree of `model` as `jax.ShapeDtypeStruct`s, traced but not compiled."""
  def init():
    return model.init(jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32))["params"]
  return jax.eval_shape(init)


def tree_size(tree: Any) -> int:
  """Number of scalars in a tree of arrays or shape structs."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def glorot_limit(shape: Sequence[int]) -> float:
  """Half-width of the Glorot-uniform range for a kernel of `shape` (..., in, out)."""
  receptive = math.prod(shape[:-2])
  return math.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))


def init_params(shapes: Any, seed: int | Sequence[int]) -> Any:
  """NumPy params for `shapes`: Glorot-uniform kernels, zero biases; deterministic in `seed`."""
  rng = np.random.default_rng(seed)

  def init(path, s):
    if path[-1].key == "kernel":
      limit = glorot_limit(s.shape)
      return rng.uniform(-limit, limit, s.shape).astype(s.dtype)
    return np.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(init, shapes)

"""Tests of metaqnn.models: parameter counts by hand, shapes, dropout, init, bad fits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaqnn import budget
from metaqnn import models
from metaqnn.architecture import ArchitectureError, parse

DIGITS = (8, 8, 1)
MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)

# (architecture, input shape, real parameter count written out by hand: k*k*in*out + out
# per convolution, in*out + out per dense layer, sides after VALID pooling floor((n-f)/l)+1).
HAND_COUNTS = [
    ("[FC(64), SM(10)]", DIGITS, (64 * 64 + 64) + (64 * 10 + 10)),
    ("[C(32,3,1), P(2,2), C(64,3,1), FC(128), SM(10)]", DIGITS,
     (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64) + (4 * 4 * 64 * 128 + 128) + (128 * 10 + 10)),
    ("[C(16,5,1), GAP(10), SM(10)]", DIGITS, (25 * 1 * 16 + 16) + (16 * 10 + 10)),
    ("[C(8,3,1), P(2,2), FC(32), FC(16), SM(10)]", DIGITS,
     (9 * 8 + 8) + (4 * 4 * 8 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)),
    # Table A3 #1 (MNIST): P(2,2) 28 -> 14, P(5,3) 14 -> 4, so FC(512) sees 4*4*512.
    ("[C(64,1,1), C(256,3,1), P(2,2), C(512,3,1), C(256,1,1), P(5,3), C(256,3,1), "
     "C(512,3,1), FC(512), SM(10)]", MNIST,
     (1 * 64 + 64) + (9 * 64 * 256 + 256) + (9 * 256 * 512 + 512) + (512 * 256
     + 256) + (9 * 256 * 256 + 256) + (9 * 256 * 512 + 512) + (4 * 4 * 512 * 512 + 512)
     + (512 * 10 + 10)),
    # Table A3 #7 (MNIST), a GAP network: no dense layer after GAP.
    ("[C(128,3,1), C(512,3,1), P(2,2), C(256,3,1), C(128,5,1), C(64,1,1), C(64,5,1), "
     "C(512,5,1), GAP(10), SM(10)]", MNIST,
     (9 * 1 * 128 + 128) + (9 * 128 * 512 + 512) + (9 * 512 * 256 + 256)
     + (25 * 256 * 128 + 128) + (128 * 64 + 64) + (25 * 64 * 64 + 64) + (25 * 64 * 512 + 512)
     + (512 * 10 + 10)),
    # Table A1 #4 (CIFAR-10): P(5,3) 32 -> 10, P(2,2) 10 -> 5.
    ("[C(256,3,1), C(256,3,1), P(5,3), C(256,1,1), C(128,3,1), P(2,2), C(128,3,1), SM(10)]",
     CIFAR, (9 * 3 * 256 + 256) + (9 * 256 * 256 + 256) + (256 * 256 + 256)
     + (9 * 256 * 128 + 128) + (9 * 128 * 128 + 128) + (5 * 5 * 128 * 10 + 10)),
]


@pytest.mark.parametrize("text,shape,expected", HAND_COUNTS)
def test_param_counts_match_hand_count(text, shape, expected):
  arch = parse(text)
  assert models.count_params(arch, shape) == expected
  flax_params = models.param_shapes(models.CNN(arch), shape)
  assert models.tree_size(flax_params) == expected


def test_paper_column_counts_only_conv_and_hidden_weights():
  # The paper's 1.10M for Table A1 #4 is its convolution weights alone; the real net has more.
  conv_weights = 9 * 3 * 256 + 9 * 256 * 256 + 256 * 256 + 9 * 256 * 128 + 9 * 128 * 128
  assert round(conv_weights / 1e6, 2) == 1.10
  assert models.count_params(parse(HAND_COUNTS[-1][0]), CIFAR) > conv_weights


def test_per_layer_params_match_flax_params():
  arch = parse("[C(8,3,1), P(2,2), FC(32), FC(16), SM(10)]")
  flax_params = models.param_shapes(models.CNN(arch), DIGITS)
  for info in models.layer_summary(arch, DIGITS):
    assert info.params == models.tree_size(flax_params.get(info.name, {}))


def test_output_shapes():
  arch = parse("[C(8,3,1), P(3,2), C(4,1,2), P(2,2), FC(32), SM(10)]")
  shapes = [i.output_shape for i in models.layer_summary(arch, (13, 13, 3))]
  # 13 -> conv SAME 13 -> pool (13-3)//2+1 = 6 -> stride-2 conv ceil(6/2) = 3 -> pool 1.
  assert shapes == [(13, 13, 8), (6, 6, 8), (3, 3, 4), (1, 1, 4), (32,), (10,)]
  gap = models.layer_summary(parse("[C(8,3,1), GAP(7), SM(7)]"), DIGITS)
  assert [i.output_shape for i in gap] == [(8, 8, 8), (7,), (7,)]
  model = models.CNN(arch)
  params = models.init_params(models.param_shapes(model, (13, 13, 3)), 0)
  assert model.apply({"params": params}, jnp.zeros((2, 13, 13, 3))).shape == (2, 10)


def test_flops_convention():
  arch = parse("[C(4,3,1), P(2,2), FC(5), SM(3)]")
  expected = 2 * (8 * 8 * 9 * 1 * 4) + 2 * (4 * 4 * 4 * 5) + 2 * (5 * 3)
  assert models.flops_per_example(arch, DIGITS) == expected
  gap = parse("[C(4,3,1), GAP(3), SM(3)]")
  assert models.flops_per_example(gap, DIGITS) == 2 * 8 * 8 * 9 * 4 + 2 * 8 * 8 * 4 * 3
  # Colour, non-square, strided, counted by hand: conv 13x9 -> 7x5, pool -> 3x2, flat 24.
  odd = parse("[C(4,3,2), P(2,2), FC(5), SM(3)]")
  expected = 2 * (7 * 5 * 9 * 3 * 4) + 2 * (3 * 2 * 4 * 5) + 2 * (5 * 3)
  assert models.flops_per_example(odd, (13, 9, 3)) == expected
  assert budget.cost(odd, (13, 9, 3))[1] == expected


@pytest.mark.parametrize("text,rates", [
    ("[C(8,3,1), SM(10)]", [0, 0]),
    ("[C(8,3,1), C(8,3,1), SM(10)]", [0, 0.5, 0]),
    ("[C(8,3,1), C(8,3,1), P(2,2), C(8,3,1), FC(32), SM(10)]", [0, 0.25, 0, 0.5, 0, 0]),
    ("[C(8,3,1), P(2,2), C(8,3,1), C(8,3,1), GAP(10), SM(10)]", [0, 0.25, 0, 0.5, 0, 0]),
    ("[C(8,1,1), C(8,1,1), C(8,1,1), C(8,1,1), C(8,1,1), C(8,1,1), SM(10)]",
     [0, 1 / 6, 0, 2 / 6, 0, 3 / 6, 0]),
])
def test_dropout_rates(text, rates):
  assert models.dropout_rates(parse(text)) == pytest.approx(rates)


def test_dropout_applied_only_in_training():
  arch = parse("[FC(512), FC(512), SM(10)]")  # One dropout (rate 0.5) after the 2nd FC.
  model = models.CNN(arch)
  params = models.init_params(models.param_shapes(model, DIGITS), 0)
  x = jnp.ones((4, *DIGITS))
  a = model.apply({"params": params}, x)
  assert np.array_equal(a, model.apply({"params": params}, x))
  b = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
  c = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b) and not np.allclose(b, c)
  off = models.CNN(arch, dropout=False)
  assert np.array_equal(a, off.apply({"params": params}, x, train=True))


def test_dropout_zeroes_the_rate_and_keeps_the_mean():
  bits = jax.random.bits(jax.random.key(0), (200_000,), jnp.uint32)
  y = models._dropout(jnp.ones(200_000), bits, 0.3)
  assert float(jnp.mean(y == 0)) == pytest.approx(0.3, abs=0.01)
  assert float(jnp.mean(y)) == pytest.approx(1.0, abs=0.01)


def test_glorot_init_statistics_and_zero_biases():
  arch = parse("[C(128,3,1), FC(256), SM(10)]")
  params = models.init_params(models.param_shapes(models.CNN(arch), (16, 16, 64)), 7)
  kernel = params["conv1"]["kernel"]
  limit = np.sqrt(6.0 / (9 * 64 + 9 * 128))
  assert kernel.shape == (3, 3, 64, 128) and kernel.dtype == np.float32
  assert np.abs(kernel).max() <= limit
  assert kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
  assert abs(kernel.mean()) < 0.01 * limit
  dense = params["fc2"]["kernel"]
  assert dense.std() == pytest.approx(np.sqrt(2.0 / (16 * 16 * 128 + 256)), rel=0.02)
  for layer in params.values():
    assert not layer["bias"].any()


def test_init_is_deterministic_in_the_seed():
  shapes = models.param_shapes(models.CNN(parse("[C(8,3,1), FC(16), SM(10)]")), DIGITS)
  a, b, c = (models.init_params(shapes, s) for s in (3, 3, 4))
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert not np.array_equal(a["conv1"]["kernel"], c["conv1"]["kernel"])


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (4, 1), (5, 1), (3, 2), (4, 2),
                                           (1, 3), (5, 3)])
def test_cpu_and_native_convolutions_agree_with_their_gradients(kernel, stride):
  """The XLA:CPU form and XLA's own SAME convolution: same outputs, same gradients."""
  rng = np.random.default_rng(kernel * 10 + stride)
  x = rng.normal(size=(3, 7, 6, 4)).astype(np.float32)
  w = rng.normal(size=(kernel, kernel, 4, 5)).astype(np.float32)
  native = lambda x, w: models.conv_same(x, w, stride, "native")
  canonical = lambda x, w: models.conv_same(x, w, stride, "canonical")
  y, vjp_native = jax.vjp(native, x, w)
  assert y.shape == (3, -(-7 // stride), -(-6 // stride), 5)
  ref = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  y2, vjp_canonical = jax.vjp(canonical, x, w)
  np.testing.assert_allclose(y2, y, rtol=1e-5, atol=1e-5)
  dy = rng.normal(size=y.shape).astype(np.float32)
  for a, b in zip(vjp_canonical(dy), vjp_native(dy)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_convolution_is_chosen_by_backend():
  assert models.conv_impl("cpu") == "canonical"
  assert models.conv_impl("gpu") == models.conv_impl("tpu") == "native"


@pytest.mark.parametrize("text,shape,match", [
    ("[P(9,2), SM(10)]", DIGITS, "larger than its 8x8 input"),
    ("[C(8,3,1), P(3,2), P(3,2), C(8,5,1), SM(10)]", DIGITS, "layer 4"),
    ("[C(8,3,1), P(2,2), P(2,2), P(2,2), P(2,2), SM(10)]", DIGITS, "layer 5"),
])
def test_bad_fits_raise(text, shape, match):
  with pytest.raises(ArchitectureError, match=match):
    models.layer_summary(parse(text), shape)


def test_bad_input_shape_raises():
  with pytest.raises(ArchitectureError, match="input shape"):
    models.layer_summary(parse("[FC(8), SM(10)]"), (8, 8))

"""Pieces the benchmarks share: generated data sets and one compiled JAX epoch, timed."""

from __future__ import annotations

import time

import jax
import numpy as np

from configs import cifar10
from metaqnn import input_pipeline, models, train
from metaqnn.architecture import Architecture


def fake_dataset(shape: tuple[int, ...], n: int, n_val: int = 64) -> input_pipeline.Dataset:
  """Random uint8 images: throughput does not depend on the pixels."""
  rng = np.random.default_rng(0)
  images = lambda k: rng.integers(0, 256, (k, *shape), dtype=np.uint8)
  labels = lambda k: rng.integers(0, 10, k).astype(np.int32)
  return input_pipeline.Dataset("fake", images(n), labels(n), images(n_val), labels(n_val),
                                images(0), labels(0), 10, "mean",
                                np.full(shape[-1], 0.5, np.float32))


def jax_throughput(arch: Architecture, shape: tuple[int, ...], batch: int, steps: int,
                   dtype: str = "float32") -> dict:
  """Compile time, init time and images/s of one compiled epoch of `steps` steps
  (`metaqnn.train.Core`: the trainer the search uses), in `dtype`."""
  config = cifar10.get_config()
  config.train.batch_size, config.train.dtype = batch, dtype
  core = train.Core(config.train, fake_dataset(shape, batch * steps))
  start = time.perf_counter()
  programs = core.compile(arch, eval_split=None)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  state = jax.block_until_ready(core.init_state(programs, [0]))
  init_s = time.perf_counter() - start
  state, _ = core.train_epoch(programs, state, 0, 0, 0, 1e-3)  # warm-up
  start = time.perf_counter()
  state, loss = core.train_epoch(programs, state, 0, 0, 1, 1e-3)  # float(loss) waits
  seconds = time.perf_counter() - start
  images_per_s = batch * steps / seconds
  tflops = 3 * models.flops_per_example(arch, shape) * images_per_s / 1e12
  return dict(init_s=init_s, compile_s=compile_s, images_per_s=images_per_s, tflops=tflops,
              loss=loss)

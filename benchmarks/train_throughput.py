"""Training throughput of metaqnn.train against a plain PyTorch version of the same nets.

  .venv/bin/python benchmarks/train_throughput.py [--steps=2]

For each architecture: images/s and achieved GFLOP/s of one compiled JAX epoch (a scan of
`steps` Adam steps), the same for a straightforward PyTorch loop (NCHW, nn.Sequential, Adam,
same dropout), their ratio, the JAX compile time and the host-side init time. Then the
resident memory and the live JAX arrays of one process that trains many digits candidates
in a row, each a different program (`--nothroughput`: only that, without PyTorch).
GFLOP/s counts a training step as 3x the forward FLOPs (`models.flops_per_example`).
The table needs torch in the venv (`.venv/bin/pip install torch==2.13.0`); it is not a
project dependency.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import jax
import psutil
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # noqa: E402
from metaqnn import models, train  # noqa: E402
from metaqnn.architecture import parse  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import jax_throughput  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 2, "Timed training steps per net and framework.")
_CANDIDATES = flags.DEFINE_integer("candidates", 30, "Digits candidates for the memory run.")
_THROUGHPUT = flags.DEFINE_bool("throughput", True, "Run the JAX-vs-PyTorch table "
                                "(--nothroughput: only the memory run).")

# (label, architecture, input shape, batch size)
NETS = [
    ("digits net", "[C(32,3,1), P(2,2), C(64,3,1), FC(128), SM(10)]", (8, 8, 1), 128),
    ("small 32px net", "[C(64,3,1), P(2,2), C(128,3,1), P(2,2), FC(128), SM(10)]",
     (32, 32, 3), 128),
    ("A1 #4 (CIFAR-10)", "[C(256,3,1), C(256,3,1), P(5,3), C(256,1,1), C(128,3,1), P(2,2), "
     "C(128,3,1), SM(10)]", (32, 32, 3), 32),
    ("A3 #1 (MNIST)", "[C(64,1,1), C(256,3,1), P(2,2), C(512,3,1), C(256,1,1), P(5,3), "
     "C(256,3,1), C(512,3,1), FC(512), SM(10)]", (28, 28, 1), 32),
    ("A3 #7 (MNIST, GAP)", "[C(128,3,1), C(512,3,1), P(2,2), C(256,3,1), C(128,5,1), "
     "C(64,1,1), C(64,5,1), C(512,5,1), GAP(10), SM(10)]", (28, 28, 1), 32),
]


def memory_over_candidates(n: int) -> tuple[list[float], list[int]]:
  """RSS (MiB) and live JAX arrays after each of `n` digits candidates (1 epoch each)
  trained in one process; no two share a program (their first layer's width differs)."""
  config = digits.get_config()
  config.train.epochs = 1
  trainer = train.Trainer(config)
  proc = psutil.Process()
  rss, arrays = [], []
  for i in range(n):
    k, units = (1, 3)[i % 2], (32, 64, 128)[i // 2 % 3]
    result = trainer.evaluate(f"[C({8 + i},{k},1), C(32,3,1), P(2,2), C(16,3,1), "
                              f"FC({units}), SM(10)]")
    assert result.status == "ok", result.message
    rss.append(proc.memory_info().rss / 2 ** 20)
    arrays.append(len(jax.live_arrays()))
  return rss, arrays


def main(argv: list[str]) -> None:
  del argv
  steps = _STEPS.value
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} x{len(jax.devices())}")
  if _THROUGHPUT.value:
    throughput_table(steps)
  start = time.perf_counter()
  rss, arrays = memory_over_candidates(_CANDIDATES.value)
  seconds = time.perf_counter() - start
  marks = lambda xs, fmt: ", ".join(f"{i + 1}: {xs[i]:{fmt}}" for i in sorted(
      {0, 4, 9, 19, 39, 59, 79, 99, len(xs) - 1}) if i < len(xs))
  print(f"\nOver {len(rss)} digits candidates (1 epoch each, {seconds / len(rss):.2f} s per "
        f"candidate), after candidate N: RSS (MiB) {marks(rss, '.0f')}; live JAX arrays "
        f"{marks(arrays, 'd')}; peak RSS of the whole run "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def throughput_table(steps: int) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  from torch_ref import torch_throughput  # pylint: disable=import-outside-toplevel
  print(f"torch {torch.__version__} with {torch.get_num_threads()} threads; {steps} timed "
        "steps per net")
  print("| net | input | batch | params | fwd MFLOP/img | JAX img/s | JAX GFLOP/s | "
        "torch img/s | torch GFLOP/s | JAX/torch | compile s | init s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for label, text, shape, batch in NETS:
    arch = parse(text)
    flops = models.flops_per_example(arch, shape)
    j = jax_throughput(arch, shape, batch, steps)
    t = torch_throughput(arch, shape, batch, steps)["images_per_s"]
    gflops = lambda ips: 3 * flops * ips / 1e9
    print(f"| {label} | {'x'.join(map(str, shape))} | {batch} | "
          f"{models.count_params(arch, shape):,} | {flops / 1e6:.1f} | "
          f"{j['images_per_s']:.0f} | {gflops(j['images_per_s']):.1f} | {t:.0f} | "
          f"{gflops(t):.1f} | {j['images_per_s'] / t:.2f} | {j['compile_s']:.2f} | "
          f"{j['init_s']:.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main)

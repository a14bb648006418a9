"""The GPU search benchmark: what a paper-size CIFAR-10 search costs on this machine.

  python benchmarks/gpu_search.py [--out=DIR]        # one H100/H200: about 5 minutes
  python benchmarks/gpu_search.py --small            # a CPU-sized run (the test suite)

No download: a learnable CIFAR-shaped data set is generated on the fly from scikit-learn's
digits (upscaled to 32x32, coloured, shifted and noised; 45k train / 5k validation), so
that accuracies and the restart rule behave as on real data. In one run it prints, and
appends as JSON lines to `DIR/gpu_search.jsonl` as it goes:
1. images/s and TFLOP/s of the paper's nets in float32 and bfloat16 (compile time in the
   default precision), beside PyTorch eager (float32, and bfloat16 autocast with
   channels_last) on the same device;
2. per-candidate compile, epoch and evaluation time of CIFAR-10-space samples (uniform
   random walks, epsilon 1) at FLOP quantiles, in the default configuration;
3. a real `run_search` (train evaluator, default config: on a GPU two candidates in flight)
   with models/hour and the share of wall time the device is busy (time inside the
   trainer's device programs, overlapping intervals merged);
4. the paper schedule's estimated GPU-hours (2,700 models x 20 epochs; no restarts, no
   early stopping), from the measurements of 2 interpolated over the space's own FLOP
   distribution: sequential (compile on the critical path) and with compile hidden,
   and PyTorch's at its measured throughput.
TFLOP/s counts a training step as 3x the forward FLOPs (`models.flops_per_example`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from common import jax_throughput  # noqa: E402
from configs import cifar10  # noqa: E402
from metaqnn import agent as agent_lib  # noqa: E402
from metaqnn import input_pipeline, models, search, search_space, train  # noqa: E402
from metaqnn.architecture import parse  # noqa: E402

_OUT = flags.DEFINE_string("out", os.environ.get("OUT", ""), "Folder for gpu_search.jsonl "
                           "(default: $OUT, else a temporary folder).")
_SMALL = flags.DEFINE_bool("small", False, "A CPU-sized run: tiny data, space and search.")
_TORCH = flags.DEFINE_bool("torch", True, "Measure the PyTorch reference (if installed).")
_SEARCH_MODELS = flags.DEFINE_integer("search_models", 40, "Unique models in the real search.")
_SPACE_SAMPLES = flags.DEFINE_integer("space_samples", 2000, "Space samples for the estimate.")

PAPER_NETS = [  # (label, architecture, batch)
    ("A1 #4 (CIFAR-10)", "[C(256,3,1), C(256,3,1), P(5,3), C(256,1,1), C(128,3,1), P(2,2), "
     "C(128,3,1), SM(10)]", 128),
    ("A1 #1 (CIFAR-10)", "[C(512,5,1), C(128,1,1), C(512,5,1), P(5,3), C(256,3,1), P(3,2), "
     "C(256,5,1), C(512,3,1), SM(10)]", 128),
    ("small 32px net", "[C(64,3,1), P(2,2), C(128,3,1), P(2,2), FC(128), SM(10)]", 128),
]
QUANTILES = (0.1, 0.5, 0.9, 0.99)
PAPER_MODELS, PAPER_EPOCHS = 2700, 20


def cifar_like(n_train: int, n_val: int, side: int = 32, seed: int = 0
               ) -> input_pipeline.Dataset:
  """A learnable CIFAR-shaped data set: digits upscaled to `side`, a random colour on a
  random background per image, shifted up to side/8 pixels, plus Gaussian noise."""
  from sklearn import datasets
  digits = datasets.load_digits()
  rng = np.random.default_rng(seed)
  n = n_train + n_val
  pick = rng.integers(0, len(digits.target), n)
  scale = side // 8
  grey = np.kron(digits.images[pick] / 16.0, np.ones((scale, scale)))  # [n, side, side]
  shift = side // 8
  dy, dx = rng.integers(-shift, shift + 1, (2, n))
  rows = (np.arange(side)[None, :] - dy[:, None]) % side
  cols = (np.arange(side)[None, :] - dx[:, None]) % side
  grey = grey[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  fg, bg = rng.uniform(0, 1, (2, n, 1, 1, 3))
  images = bg + grey[..., None] * (fg - bg) + rng.normal(0, 0.08, (n, side, side, 3))
  images = (np.clip(images, 0, 1) * 255).astype(np.uint8)
  labels = digits.target[pick].astype(np.int32)
  mean = images[:n_train].reshape(-1, 3).mean(0).astype(np.float32) / 255.0
  return input_pipeline.Dataset(
      "cifar-like", images[:n_train], labels[:n_train], images[n_train:], labels[n_train:],
      images[:0], labels[:0], 10, "gcn", mean)


class Recorder:
  """Prints a line and appends one JSON object per measurement to the output file."""

  def __init__(self, out_dir: str):
    os.makedirs(out_dir, exist_ok=True)
    self.path = os.path.join(out_dir, "gpu_search.jsonl")

  def __call__(self, kind: str, line: str, **values) -> None:
    print(line, flush=True)
    with open(self.path, "a") as f:
      f.write(json.dumps({"kind": kind, **values}) + "\n")


def config_for(small: bool):
  config = cifar10.get_config()
  config.dataset.name = "cifar-like"
  if small:
    config.space.max_depth = 4
    config.space.conv_filters = (16, 32)
    config.train.batch_size, config.train.eval_batch_size = 32, 128
  return config


def busy_intervals():
  """Wraps the trainer core's device programs to record when they run (any thread)."""
  intervals, lock = [], threading.Lock()
  originals = {}
  for name in ("train_epoch", "accuracy"):
    fn = getattr(train.Core, name)
    originals[name] = fn

    def timed(*args, _fn=fn, **kwargs):
      start = time.perf_counter()
      try:
        return _fn(*args, **kwargs)  # both wait for their result
      finally:
        with lock:
          intervals.append((start, time.perf_counter()))

    setattr(train.Core, name, timed)

  def restore():
    for name, fn in originals.items():
      setattr(train.Core, name, fn)

  return intervals, restore


def union_seconds(intervals, start: float, end: float) -> float:
  total, cursor = 0.0, start
  for a, b in sorted(intervals):
    a, b = max(a, cursor), min(b, end)
    if b > a:
      total += b - a
      cursor = b
  return total


def candidate_times(config, dataset, arch) -> dict:
  """Compile, one epoch and one evaluation of `arch`, as the search's trainer runs them."""
  trainer = train.Trainer(config, dataset)
  core = trainer.core
  start = time.perf_counter()
  programs = core.compile(arch)
  compile_s = time.perf_counter() - start
  state = core.init_state(programs, [0])
  state, _ = core.train_epoch(programs, state, 0, 0, 0, 1e-3)  # first run: warm-up
  core.accuracy(programs, state[0])
  start = time.perf_counter()
  state, _ = core.train_epoch(programs, state, 0, 0, 1, 1e-3)
  epoch_s = time.perf_counter() - start
  start = time.perf_counter()
  accuracy = core.accuracy(programs, state[0])
  eval_s = time.perf_counter() - start
  return dict(compile_s=compile_s, epoch_s=epoch_s, eval_s=eval_s, accuracy=accuracy)


def interpolate(flops: np.ndarray, at: np.ndarray, seconds: np.ndarray,
                per_flop: bool) -> np.ndarray:
  """Seconds at `flops` from measurements at `at` (sorted), linear in log-log inside the
  measured range; outside it, proportional to FLOPs (`per_flop`) or held constant."""
  out = np.exp(np.interp(np.log(flops), np.log(at), np.log(seconds)))
  if per_flop:
    out = np.where(flops > at[-1], seconds[-1] * flops / at[-1], out)
    out = np.where(flops < at[0], seconds[0] * flops / at[0], out)
  return out


def main(argv):
  del argv
  small = _SMALL.value
  out_dir = _OUT.value or tempfile.mkdtemp(prefix="gpu_search_")
  record = Recorder(out_dir)
  device = jax.devices()[0]
  global torch_ref
  torch = None
  if _TORCH.value:
    try:
      import torch
      import torch_ref
    except ImportError:
      print("PyTorch is not installed: no reference figures")
  config = config_for(small)
  precision = train.resolved_precision(config)
  record("machine", f"JAX {jax.__version__} on {device.device_kind} x{len(jax.devices())} "
         f"({jax.default_backend()}); default precision {precision}; torch "
         f"{torch.__version__ if torch else '-'}; results in {record.path}",
         device=device.device_kind, backend=jax.default_backend(), jax=jax.__version__,
         precision=precision, torch=torch.__version__ if torch else None)
  torch_device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
  n_train, n_val = (256, 128) if small else (45000, 5000)
  steps = 2 if small else 60

  # 1. The paper's nets: throughput in both precisions, and PyTorch on the same device.
  record("header", "\n| net | batch | MFLOP/img | fp32 img/s | fp32 TFLOP/s | fp32 compile s | "
         "bf16 img/s | bf16 TFLOP/s | bf16 compile s | bf16/fp32 | torch fp32 img/s | "
         "torch bf16 CL img/s | bf16 / torch bf16 |\n|---|---|---|---|---|---|---|---|---|"
         "---|---|---|---|")
  nets = PAPER_NETS[:1] if small else PAPER_NETS
  for label, text, batch in nets:
    arch, batch = parse(text), (8 if small else batch)
    row = {d: jax_throughput(arch, (32, 32, 3), batch, steps, d)
           for d in ("float32", "bfloat16")}
    tf = {m: torch_ref.torch_throughput(arch, (32, 32, 3), batch, steps, torch_device, m)
          ["images_per_s"] for m in (False, True)} if torch else {False: 0.0, True: 0.0}
    f32, b16 = row["float32"], row["bfloat16"]
    record("net", f"| {label} | {batch} | {models.flops_per_example(arch, (32, 32, 3)) / 1e6:.0f}"
           f" | {f32['images_per_s']:.0f} | {f32['tflops']:.1f} | {f32['compile_s']:.1f} | "
           f"{b16['images_per_s']:.0f} | {b16['tflops']:.1f} | {b16['compile_s']:.1f} | "
           f"{b16['images_per_s'] / f32['images_per_s']:.2f} | {tf[False]:.0f} | "
           f"{tf[True]:.0f} | {b16['images_per_s'] / tf[True] if tf[True] else 0:.2f} |",
           net=label, arch=text, batch=batch, jax=row, torch_fp32=tf[False],
           torch_bf16_cl=tf[True])

  # 2. Candidates of the CIFAR-10 space at FLOP quantiles, in the default configuration.
  space = search_space.from_config(config)
  walker = agent_lib.Agent(space, seed=0)
  samples = [walker.sample(1.0).architecture
             for _ in range(200 if small else _SPACE_SAMPLES.value)]
  flops = np.array([models.flops_per_example(a, (32, 32, 3)) for a in samples], np.float64)
  dataset = cifar_like(n_train, n_val)
  record("header", f"\nCIFAR-10-space candidates at FLOP quantiles ({len(samples)} uniform "
         f"samples; {n_train} train / {n_val} validation images; {precision})\n"
         "| quantile | GFLOP/img | compile s | epoch s | eval s | img/s | torch bf16 CL epoch s "
         "| torch eval s | arch |\n|---|---|---|---|---|---|---|---|---|")
  quantiles = (0.1, 0.5) if small else QUANTILES
  measured = []
  for q in quantiles:
    i = int(np.argmin(np.abs(flops - np.quantile(flops, q))))
    t = candidate_times(config, dataset, samples[i])
    tt = torch_ref.torch_throughput(samples[i], (32, 32, 3), int(config.train.batch_size),
                                    steps, torch_device, True, eval_examples=n_val
                                    ) if torch else None
    torch_epoch = n_train / tt["images_per_s"] if tt else 0.0
    measured.append((flops[i], t, torch_epoch, tt["eval_s"] if tt else 0.0))
    record("quantile", f"| {q:g} | {flops[i] / 1e9:.3f} | {t['compile_s']:.1f} | "
           f"{t['epoch_s']:.2f} | {t['eval_s']:.3f} | {n_train / t['epoch_s']:.0f} | "
           f"{torch_epoch:.2f} | {tt['eval_s'] if tt else 0:.3f} | {samples[i]} |",
           quantile=q, flops=flops[i], arch=str(samples[i]), **t, torch_epoch_s=torch_epoch,
           torch_eval_s=tt["eval_s"] if tt else None)

  # 3. A real search with the default configuration.
  sconf = config_for(small)
  sconf.search.schedule = f"1.0:{3 if small else _SEARCH_MODELS.value}"
  sconf.train.epochs = 1
  sconf.final.run_after_search = False
  workers = search.executors.num_workers(sconf)
  intervals, restore = busy_intervals()
  mem = []
  with tempfile.TemporaryDirectory() as d:
    start = time.perf_counter()
    try:
      result = search.run_search(sconf, os.path.join(d, "w"), log_interval=1e9,
                                 tensorboard=False, dataset=dataset)
    finally:
      restore()
    wall = time.perf_counter() - start
    stats = getattr(device, "memory_stats", lambda: None)() or {}
    mem = stats.get("peak_bytes_in_use", 0) / 2 ** 30
  busy = union_seconds(intervals, start, start + wall) / wall
  record("search", f"\nreal search: {result.unique_models} models of 1 epoch, {workers} "
         f"worker(s), {wall:.1f} s, {result.unique_models / wall * 3600:.0f} models/hour, "
         f"device busy {100 * busy:.0f}% of the wall time, best {result.best_accuracy:.4f}; "
         f"peak device memory {mem:.2f} GiB", models=result.unique_models, workers=workers,
         seconds=wall, busy=busy, best=result.best_accuracy, peak_device_gib=mem)

  # 4. The paper schedule, estimated over the space's own FLOP distribution.
  at = np.array([m[0] for m in measured])
  order = np.argsort(at)
  at = at[order]
  col = lambda k: np.array([measured[j][1][k] for j in order])
  epoch = interpolate(flops, at, col("epoch_s"), True)
  evals = interpolate(flops, at, col("eval_s"), True)
  compile_ = interpolate(flops, at, col("compile_s"), False)
  scale = PAPER_MODELS / len(flops) / 3600
  train_h = float(np.sum(PAPER_EPOCHS * (epoch + evals)) * scale)
  sequential_h = train_h + float(np.sum(compile_) * scale)
  hidden_h = train_h / max(busy, 1e-9) if workers > 1 else sequential_h
  torch_h = 0.0
  if torch:
    t_epoch = interpolate(flops, at, np.array([measured[j][2] for j in order]), True)
    t_eval = interpolate(flops, at, np.array([measured[j][3] for j in order]), True)
    torch_h = float(np.sum(PAPER_EPOCHS * (t_epoch + t_eval)) * scale)
  record("estimate", f"\npaper schedule ({PAPER_MODELS} models x {PAPER_EPOCHS} epochs): "
         f"device work {train_h:.1f} h; sequential with compile {sequential_h:.1f} h; default "
         f"({workers} worker(s), device busy {100 * busy:.0f}%) {hidden_h:.1f} GPU-hours; "
         f"PyTorch eager bf16 channels_last {torch_h:.1f} h"
         + (f" ({torch_h / hidden_h:.2f}x ours)" if torch_h else ""),
         train_hours=train_h, sequential_hours=sequential_h, default_hours=hidden_h,
         torch_bf16_hours=torch_h)


torch_ref = None  # benchmarks/torch_ref.py, imported in main() when PyTorch is there

if __name__ == "__main__":
  app.run(main)

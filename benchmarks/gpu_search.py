"""The GPU search benchmark: what a paper-size CIFAR-10 search costs on this machine.

  python benchmarks/gpu_search.py [--out=DIR]        # one H200: ~6 min (its parts' times)
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
3. real `run_search`es (train evaluator; `--search_workers`, 0 = the default: on a GPU
   two candidates in flight) with models/hour, the share of wall time the device is busy
   (time inside the trainer's device programs, overlapping intervals merged), the compile
   seconds, and device memory after every candidate (it must stay flat), with a line per
   candidate as it goes;
4. the paper schedule's estimated GPU-hours (2,700 models x 20 epochs; no restarts, no
   early stopping), from the measurements of 2 interpolated over the space's own FLOP
   distribution: with compile on the critical path; pipelined as the search runs them,
   modelled from each candidate's device time t and compile time c (`in_flight_seconds`:
   one worker compiling the next candidate ahead, and two workers), with compiles as
   measured alone and at the real search's mean; and PyTorch's at its measured
   throughput.
TFLOP/s counts a training step as 3x the forward FLOPs (`models.flops_per_example`). On
A1 #4 it also compiles again and at lower GPU autotuning levels (`xla_gpu_autotune_level`),
to show what autotuning costs in compile time and buys in speed. A section that fails is
recorded as an `error` line and the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from common import jax_throughput  # noqa: E402
from configs import cifar10  # noqa: E402
from metaqnn import agent as agent_lib  # noqa: E402
from metaqnn import input_pipeline, models, search, search_space, train  # noqa: E402
from metaqnn.architecture import Conv, parse  # noqa: E402

_OUT = flags.DEFINE_string("out", os.environ.get("OUT", ""), "Folder for gpu_search.jsonl "
                           "(default: $OUT, else a temporary folder).")
_SMALL = flags.DEFINE_bool("small", False, "A CPU-sized run: tiny data, space and search.")
_TORCH = flags.DEFINE_bool("torch", True, "Measure the PyTorch reference (if installed).")
_SEARCH_MODELS = flags.DEFINE_integer("search_models", 6, "Unique models per real search.")
_SEARCH_EPOCHS = flags.DEFINE_integer("search_epochs", 4, "Epochs per model in the real search.")
_SEARCH_WORKERS = flags.DEFINE_list("search_workers", ["0"], "Real searches to run, by "
                                    "config.num_workers (0 = auto: 2 per GPU, 1 on a CPU).")
_SECTIONS = flags.DEFINE_list(
    "sections", ["nets", "quantiles", "searches"], "What to run, in this order whatever the "
    "order given: nets (A1 #4 and its autotuning), quantiles, searches, more_nets (the "
    "small 32px net and A1 #1).")
_ESTIMATE_FROM = flags.DEFINE_list(
    "estimate_from", [], "Measure nothing: recompute the paper estimate from the quantile "
    "and search lines of these gpu_search.jsonl files (from one machine).")
_SPACE_SAMPLES = flags.DEFINE_integer("space_samples", 2000, "Space samples for the estimate.")

PAPER_NETS = [  # (label, architecture, batch); A1 #4 first: the targets are set on it
    ("A1 #4 (CIFAR-10)", "[C(256,3,1), C(256,3,1), P(5,3), C(256,1,1), C(128,3,1), P(2,2), "
     "C(128,3,1), SM(10)]", 128),
    ("small 32px net", "[C(64,3,1), P(2,2), C(128,3,1), P(2,2), FC(128), SM(10)]", 128),
    ("A1 #1 (CIFAR-10)", "[C(512,5,1), C(128,1,1), C(512,5,1), P(5,3), C(256,3,1), P(3,2), "
     "C(256,5,1), C(512,3,1), SM(10)]", 128),
]
QUANTILES = (0.1, 0.5, 0.9, 0.99)
AUTOTUNE_LEVELS = (0, 1, 2)  # XLA's default is 4: levels 1-3 check less, 0 does not tune
SECTIONS = ("nets", "quantiles", "searches", "more_nets")
AUTOTUNE_STEPS = 8  # short: at level 0, A1 #4 trained at 69 img/s on an H200
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


class Probe:
  """Records, from any thread, when the trainer core's device programs run, how long its
  compiles take (background compiles of `Core.prepare` included, guesses that were not
  used too), and after each candidate a `candidate` line with the totals so far, so that a
  search cut short by a time limit still leaves its figures."""

  def __init__(self, record, device, start: float):
    self.record, self.device, self.start = record, device, start
    self.busy, self.compile_s, self.memory, self.waited = [], [], [], []
    self._lock, self._originals = threading.Lock(), []
    busy = lambda start, end: self.busy.append((start, end))
    for name in ("train_epoch", "accuracy"):  # both wait for their result
      self._wrap(train.Core, name, lambda fn: self._timed(fn, busy))
    self._wrap(train.Core, "compile",
               lambda fn: self._timed(fn, lambda start, end: self.compile_s.append(end - start)))
    self._wrap(train.Trainer, "evaluate", self._after_candidate)

  def _wrap(self, cls, name, make):
    fn = getattr(cls, name)
    self._originals.append((cls, name, fn))
    setattr(cls, name, make(fn))

  def _timed(self, fn, done):
    """`fn`, calling `done(start, end)` under the lock when it returns or raises."""
    def timed(*args, **kwargs):
      start = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        with self._lock:
          done(start, time.perf_counter())
    return timed

  def _after_candidate(self, fn):
    def evaluate(*args, **kwargs):
      result = fn(*args, **kwargs)
      now = time.perf_counter()
      with self._lock:
        self.memory.append(device_memory(self.device).get("bytes_in_use", 0) / 2 ** 30)
        self.waited.append(result.compile_seconds or 0.0)  # None: it failed before
        row = dict(n=len(self.memory), seconds=now - self.start,
                   device_s=union_seconds(self.busy, self.start, now),
                   compile_each_s=list(self.compile_s), compile_wait_s=self.waited[-1],
                   memory_gib=self.memory[-1], accuracy=result.accuracy, arch=result.arch)
      self.record("candidate", f"  candidate {row['n']} done at {row['seconds']:.1f} s: "
                  f"device {row['device_s']:.1f} s, {len(row['compile_each_s'])} compiles "
                  f"{sum(row['compile_each_s']):.1f} s; it waited {row['compile_wait_s']:.1f} s "
                  f"for its compile; {row['memory_gib']:.2f} GiB in use",
                  **row)
      return result
    return evaluate

  def restore(self) -> None:
    for cls, name, fn in reversed(self._originals):
      setattr(cls, name, fn)


def device_memory(device) -> dict:
  """The device's memory statistics (empty where the backend keeps none, as on CPUs)."""
  try:
    return device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return {}


@contextlib.contextmanager
def compile_options(options: dict):
  """Compiles the trainer core's programs with these XLA options instead of the defaults."""
  original = train.compile_lowered
  train.compile_lowered = lambda lowered, platform: lowered.compile(compiler_options=options)
  try:
    yield
  finally:
    train.compile_lowered = original


def in_flight_seconds(device_s: np.ndarray, compile_s: np.ndarray, workers: int) -> float:
  """Wall seconds of candidates of device time t and compile time c on one device. One
  worker compiles the next candidate while this one trains (`Core.prepare`): max(t, c)
  each. With w workers, each compiles then trains its own: the device is the limit where
  t >= (c + t) / w, the workers where it is not."""
  if workers == 1:
    return float(np.sum(np.maximum(device_s, compile_s)))
  return float(np.sum(np.maximum(device_s, (compile_s + device_s) / workers)))


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


def guarded(record, section: str, fn, *args):
  """Runs one section; a failure is recorded as an `error` line and the run goes on."""
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    record("error", f"\n{section} failed: {type(e).__name__}: {e}", section=section,
           traceback=traceback.format_exc())
    return None


def net_row(record, label: str, text: str, batch: int, steps: int, torch_device,
            small: bool) -> float | None:
  """One paper net: JAX in float32 and bfloat16, PyTorch eager in both. On A1 #4 on a GPU
  also the autotuning rows; returns their reuse ratio (`autotune_rows`)."""
  arch = parse(text)
  row = {d: jax_throughput(arch, (32, 32, 3), batch, steps, d) for d in ("float32", "bfloat16")}
  tf = {m: torch_ref.torch_throughput(arch, (32, 32, 3), batch, steps, torch_device, m)
        ["images_per_s"] for m in (False, True)} if torch_ref else {False: 0.0, True: 0.0}
  f32, b16 = row["float32"], row["bfloat16"]
  record("net", f"| {label} | {batch} | {models.flops_per_example(arch, (32, 32, 3)) / 1e6:.0f}"
         f" | {f32['images_per_s']:.0f} | {f32['tflops']:.1f} | {f32['compile_s']:.1f} | "
         f"{b16['images_per_s']:.0f} | {b16['tflops']:.1f} | {b16['compile_s']:.1f} | "
         f"{b16['images_per_s'] / f32['images_per_s']:.2f} | {tf[False]:.0f} | "
         f"{tf[True]:.0f} | {b16['images_per_s'] / tf[True] if tf[True] else 0:.2f} |",
         net=label, arch=text, batch=batch, jax=row, torch_fp32=tf[False],
         torch_bf16_cl=tf[True])
  if jax.default_backend() == "gpu" and not small and label.startswith("A1 #4"):
    return autotune_rows(record, label, arch, batch, b16)
  return None


def autotune_rows(record, label: str, arch, batch: int, default: dict) -> float:
  """What GPU autotuning costs and buys on one net. Compiled again, the net can reuse the
  autotuning results of its first compile, if XLA kept them in the process; a lower level
  on a batch size not seen yet (new shapes) shows what tuning less would cost. Returns the
  second compile's time over the first's."""
  again = jax_throughput(arch, (32, 32, 3), batch, AUTOTUNE_STEPS, "bfloat16")
  reused = dict(net=label, level="reused", batch=batch, at_level=again, default=default)
  record("autotune", f"  {label}, bf16, compiled again: compile {again['compile_s']:.1f} s "
         f"(first: {default['compile_s']:.1f})", **reused)
  for i, level in enumerate(AUTOTUNE_LEVELS):
    guarded(record, f"autotune level {level}", autotune_level, record, label, arch,
            batch - 8 * (i + 1), level, default)
  return reuse_ratio(reused)


def autotune_level(record, label: str, arch, batch: int, level: int, default: dict) -> None:
  with compile_options({"xla_gpu_autotune_level": level}):
    t = jax_throughput(arch, (32, 32, 3), batch, AUTOTUNE_STEPS, "bfloat16")
  record("autotune", f"  {label}, bf16, batch {batch}, xla_gpu_autotune_level={level}: "
         f"compile {t['compile_s']:.1f} s, {t['images_per_s']:.0f} img/s over "
         f"{AUTOTUNE_STEPS} steps (default level: {default['compile_s']:.1f} s, "
         f"{default['images_per_s']:.0f})", net=label, level=level, batch=batch, at_level=t,
         default=default)


def quantile_row(record, config, dataset, q, flops, samples, steps, torch_device, n_train,
                 n_val, measured):
  """One CIFAR-10-space sample near FLOP quantile `q`: compile, epoch and evaluation, then
  PyTorch's (a PyTorch failure leaves the JAX figures recorded)."""
  i = int(np.argmin(np.abs(flops - np.quantile(flops, q))))
  t = candidate_times(config, dataset, samples[i])
  tt = guarded(record, f"PyTorch at quantile {q:g}", torch_ref.torch_throughput, samples[i],
               (32, 32, 3), int(config.train.batch_size), steps, torch_device, True,
               n_val) if torch_ref else None
  torch_epoch = n_train / tt["images_per_s"] if tt else 0.0
  measured.append((flops[i], t, torch_epoch, tt["eval_s"] if tt else 0.0))
  record("quantile", f"| {q:g} | {flops[i] / 1e9:.3f} | {t['compile_s']:.1f} | "
         f"{t['epoch_s']:.2f} | {t['eval_s']:.3f} | {n_train / t['epoch_s']:.0f} | "
         f"{torch_epoch:.2f} | {tt['eval_s'] if tt else 0:.3f} | {samples[i]} |",
         quantile=q, flops=flops[i], arch=str(samples[i]), **t, torch_epoch_s=torch_epoch,
         torch_eval_s=tt["eval_s"] if tt else None)


def real_search(record, small: bool, dataset, device, num_workers: int) -> dict:
  """A real `run_search` of the CIFAR-10 space on the data set, timed and probed."""
  config = config_for(small)
  config.num_workers = num_workers
  config.search.schedule = f"1.0:{3 if small else _SEARCH_MODELS.value}"
  config.train.epochs = 1 if small else _SEARCH_EPOCHS.value
  config.final.run_after_search = False
  workers = search.executors.num_workers(config)
  peak_before = device_memory(device).get("peak_bytes_in_use", 0) / 2 ** 30
  with tempfile.TemporaryDirectory() as d:
    start = time.perf_counter()
    probe = Probe(record, device, start)
    try:
      result = search.run_search(config, os.path.join(d, "w"), log_interval=1e9,
                                 tensorboard=False, dataset=dataset)
    finally:
      probe.restore()
    wall = time.perf_counter() - start
  device_s = union_seconds(probe.busy, start, start + wall)
  compile_s = float(np.sum(probe.compile_s))
  # A consistency check of the estimate's model on the search's own totals (two workers
  # busy throughout give the wall time by construction; gaps would show here).
  modelled = in_flight_seconds(np.array([device_s]), np.array([compile_s]), workers)
  # JAX keeps one peak per process: it is the search's only if it rose during the search.
  peak = device_memory(device).get("peak_bytes_in_use", 0) / 2 ** 30
  mem = probe.memory or [0.0]
  row = dict(models=result.unique_models, epochs=int(config.train.epochs), workers=workers,
             seconds=wall, busy=device_s / wall, device_s=device_s, compile_s=compile_s,
             compiles=len(probe.compile_s), compile_each_s=probe.compile_s,
             compile_wait_s=float(np.sum(probe.waited)),
             modelled_s=modelled, best=result.best_accuracy, process_peak_before_gib=peak_before,
             process_peak_gib=peak, memory_after_each_gib=mem)
  record("search", f"\nreal search: {result.unique_models} models of {config.train.epochs} "
         f"epoch(s), {workers} worker(s), {wall:.1f} s, "
         f"{result.unique_models / wall * 3600:.0f} models/hour, device busy "
         f"{100 * device_s / wall:.0f}% of the wall time ({device_s:.1f} s), {len(probe.compile_s)} "
         f"compiles {compile_s:.1f} s, waited for {row['compile_wait_s']:.1f} s of them "
         f"(modelled wall {modelled:.1f} s), best "
         f"{result.best_accuracy:.4f}; device memory after each candidate {mem[0]:.2f} .. "
         f"{max(mem):.2f} GiB (last {mem[-1]:.2f}), process peak {peak:.2f} GiB (before the "
         f"search {peak_before:.2f})", **row)
  return row


def new_shapes(samples: list, shape: tuple[int, ...] = (32, 32, 3)) -> np.ndarray:
  """For each sample in order, whether it has a convolution (input side, input channels,
  filters, kernel) that no earlier sample has: what XLA's in-process autotuning results,
  kept by shape, cannot serve yet."""
  seen, out = set(), []
  for arch in samples:
    keys, current = set(), shape
    for layer, info in zip(arch.layers, models.layer_summary(arch, shape)):
      if isinstance(layer, Conv):
        keys.add((current[0], current[-1], layer.filters, layer.kernel))
      current = info.output_shape
    out.append(bool(keys - seen))
    seen |= keys
  return np.array(out)


def estimate(record, samples: list, flops: np.ndarray, measured: list, workers: int,
             search_row: dict | None = None, reuse: float | None = None) -> None:
  """The paper schedule's GPU-hours over the space's own FLOP distribution, modelled from
  the measurements (`in_flight_seconds`). With the real search's line, also with its mean
  compile (slower than alone: it shares the machine with the other worker's training).
  With `reuse` (a compile with autotuning results reused over the first one, measured on
  A1 #4), also with candidates whose convolution shapes were all seen compiling that much
  faster."""
  at = np.array([m[0] for m in measured])
  order = np.argsort(at)
  at = at[order]
  col = lambda k: np.array([measured[j][1][k] for j in order])
  epoch = interpolate(flops, at, col("epoch_s"), True)
  evals = interpolate(flops, at, col("eval_s"), True)
  compile_ = interpolate(flops, at, col("compile_s"), False)
  scale = PAPER_MODELS / len(flops) / 3600
  device = PAPER_EPOCHS * (epoch + evals)
  hours = lambda c, w: in_flight_seconds(device, c, w) * scale
  alt_workers = 3 - workers if workers in (1, 2) else 1
  fresh = new_shapes(samples)
  block = max(1, len(fresh) // 10)
  row = dict(train_hours=float(np.sum(device) * scale),
             sequential_hours=float(np.sum(device + compile_) * scale),
             mean_compile_s=float(np.mean(compile_)), workers=workers,
             in_flight_hours=hours(compile_, workers), alt_workers=alt_workers,
             alt_hours=hours(compile_, alt_workers), new_shapes_first=float(fresh[:block].mean()),
             new_shapes_last=float(fresh[-block:].mean()))
  line = (f"\npaper schedule ({PAPER_MODELS} models x {PAPER_EPOCHS} epochs): device work "
          f"{row['train_hours']:.2f} h; compile on the critical path {row['sequential_hours']:.2f}"
          f" h (mean compile {row['mean_compile_s']:.1f} s, measured alone); default, {workers} "
          f"worker(s) (modelled) {row['in_flight_hours']:.2f} GPU-hours; {alt_workers} worker(s) "
          f"(modelled) {row['alt_hours']:.2f} h")
  if search_row:
    row["search_compile_s"] = search_row["compile_s"] / max(1, search_row["compiles"])
    row["search_compile_hours"] = hours(np.full_like(device, row["search_compile_s"]), workers)
    line += (f"; with the real search's mean compile ({row['search_compile_s']:.1f} s) "
             f"{row['search_compile_hours']:.2f} h")
  line += (f"\nconvolution shapes: the first {block} samples meet a new one in "
           f"{100 * row['new_shapes_first']:.0f}% of models, the last {block} in "
           f"{100 * row['new_shapes_last']:.0f}%")
  if reuse:
    row["reuse"] = reuse
    row["reused_hours"] = hours(np.where(fresh, compile_, compile_ * reuse), workers)
    line += (f"; if candidates of seen shapes compiled {reuse:.2f}x as long, as A1 #4 "
             f"compiled again: {row['reused_hours']:.2f} h (a lower bound: only "
             f"convolutions are counted, and a net compiled again is the best case)")
  if all(m[2] for m in measured):
    t_epoch = interpolate(flops, at, np.array([measured[j][2] for j in order]), True)
    t_eval = interpolate(flops, at, np.array([measured[j][3] for j in order]), True)
    row["torch_bf16_hours"] = float(np.sum(PAPER_EPOCHS * (t_epoch + t_eval)) * scale)
    line += (f"\nPyTorch eager bf16 channels_last {row['torch_bf16_hours']:.2f} h "
             f"({row['torch_bf16_hours'] / row['in_flight_hours']:.2f}x ours, default)")
  record("estimate", line, **row)


def space_flops(config, n: int) -> tuple[list, np.ndarray]:
  """`n` uniform random walks of the config's space (seed 0) and their FLOPs per image."""
  walker = agent_lib.Agent(search_space.from_config(config), seed=0)
  samples = [walker.sample(1.0).architecture for _ in range(n)]
  return samples, np.array([models.flops_per_example(a, (32, 32, 3)) for a in samples],
                           np.float64)


def estimate_from(record, paths: list[str]) -> None:
  """The paper estimate from recorded quantile, search and autotune lines, on any machine."""
  rows = [json.loads(line) for path in paths for line in open(path)]
  measured = [(r["flops"], r, r.get("torch_epoch_s") or 0.0, r.get("torch_eval_s") or 0.0)
              for r in rows if r["kind"] == "quantile"]
  if len(measured) < 2:
    raise SystemExit("--estimate_from: fewer than two quantile lines in " + ", ".join(paths))
  found = [r for r in rows if r["kind"] == "search"]
  reused = [r for r in rows if r["kind"] == "autotune" and r.get("level") == "reused"]
  samples, flops = space_flops(config_for(False), _SPACE_SAMPLES.value)
  estimate(record, samples, flops, measured, found[0]["workers"] if found else 2,
           found[0] if found else None, reuse_ratio(reused[0]) if reused else None)


def reuse_ratio(row: dict) -> float:
  return row["at_level"]["compile_s"] / row["default"]["compile_s"]


def main(argv):
  del argv
  small = _SMALL.value
  out_dir = _OUT.value or tempfile.mkdtemp(prefix="gpu_search_")
  record = Recorder(out_dir)
  if _ESTIMATE_FROM.value:
    return estimate_from(record, _ESTIMATE_FROM.value)
  sections = set(_SECTIONS.value)
  if sections - set(SECTIONS):
    raise app.UsageError(f"--sections: unknown {sorted(sections - set(SECTIONS))}; choose "
                         f"from {', '.join(SECTIONS)}")
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

  # 1. A1 #4, the net the targets are set on (the other paper nets come last).
  nets = [(label, text, 8 if small else batch) for label, text, batch in PAPER_NETS]
  if not small:  # CUDA, cuDNN and the autotuner start before anything is timed
    guarded(record, "warm-up", jax_throughput, parse(nets[1][1]), (32, 32, 3), 8, 1)
  if sections & {"nets", "more_nets"}:
    record("header", "\n| net | batch | MFLOP/img | fp32 img/s | fp32 TFLOP/s | fp32 compile "
           "s | bf16 img/s | bf16 TFLOP/s | bf16 compile s | bf16/fp32 | torch fp32 img/s | "
           "torch bf16 CL img/s | bf16 / torch bf16 |\n|---|---|---|---|---|---|---|---|---|"
           "---|---|---|---|")
  reuse = None
  if "nets" in sections:
    reuse = guarded(record, nets[0][0], net_row, record, *nets[0], steps, torch_device, small)

  # 2. Candidates of the CIFAR-10 space at FLOP quantiles, in the default configuration.
  samples, flops = space_flops(config, 200 if small else _SPACE_SAMPLES.value)
  dataset = cifar_like(n_train, n_val)
  measured = []
  if "quantiles" in sections:
    record("header", f"\nCIFAR-10-space candidates at FLOP quantiles ({len(samples)} uniform "
           f"samples; {n_train} train / {n_val} validation images; {precision})\n"
           "| quantile | GFLOP/img | compile s | epoch s | eval s | img/s | torch bf16 CL epoch "
           "s | torch eval s | arch |\n|---|---|---|---|---|---|---|---|---|")
    for q in (0.1, 0.5) if small else QUANTILES:
      guarded(record, f"quantile {q:g}", quantile_row, record, config, dataset, q, flops,
              samples, steps, torch_device, n_train, n_val, measured)

  # 3. Real searches, the default configuration first; 4. the paper schedule's estimate,
  # once the first search is done (or at once, without searches).
  default_workers = search.executors.num_workers(config)
  workers_list = _SEARCH_WORKERS.value[:1] if small else _SEARCH_WORKERS.value
  if "searches" not in sections and len(measured) >= 2:
    guarded(record, "estimate", estimate, record, samples, flops, measured, default_workers,
            None, reuse)
  for i, workers in enumerate(workers_list if "searches" in sections else ()):
    row = guarded(record, f"search (num_workers={workers})", real_search, record, small,
                  dataset, device, int(workers))
    if i == 0 and len(measured) >= 2:
      guarded(record, "estimate", estimate, record, samples, flops, measured,
              (row or {}).get("workers", default_workers), row, reuse)

  for label, text, batch in nets[1:] if "more_nets" in sections else ():
    guarded(record, label, net_row, record, label, text, batch, steps, torch_device, small)


torch_ref = None  # benchmarks/torch_ref.py, imported in main() when PyTorch is there

if __name__ == "__main__":
  app.run(main)

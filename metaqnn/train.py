"""Train and evaluate sampled networks (SPEC section 4), fast enough for thousands per process.

One trainer core (`Core`) serves the search (`Trainer`), the final stage and transfer
(`FinalTrainer`). Design, for throughput over many small candidates:
- The data set is put on the devices once, as uint8, replicated (and shared by the workers
  of one device group); batches are gathered and normalised inside the compiled step.
- One epoch is one compiled call: a `lax.scan` over the batches of a permutation drawn on
  the device; the last partial batch is dropped (a fresh permutation each epoch). Evaluation
  is one call too, padded and masked so that every example counts exactly once.
- One compile per architecture, ahead of time: the learning rate and the random seed are
  arguments, so epochs and restarts reuse the executables; the training and evaluation
  programs compile concurrently. Params and optimiser state are donated. The compiled
  programs belong to the candidate and are freed with it, so memory stays flat.
- `prepare(arch)` compiles a likely next candidate (the search's guess) on a background
  thread while the current one trains; at most two guesses (compiled programs) are held,
  so memory stays bounded. Results do not depend on it, except through wall-clock
  limits (`train.max_seconds`). On CPUs, programs compile with `CPU_COMPILE_OPTIONS`.
- Precision (`train.dtype`): "auto" computes in bfloat16 on GPUs and TPUs and in float32
  on CPUs; parameters, optimiser state, logits and the loss stay float32.
- The convolution is chosen by backend (`models.conv_impl`).
- Parameters are initialised with NumPy on the host from `jax.eval_shape` shapes.
- Data parallel over a 1-D mesh ('data') with `jax.jit` and `NamedSharding`: the batch is
  sharded, params are replicated.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metaqnn import input_pipeline, models, signals, sources
from metaqnn.architecture import Architecture, ArchitectureError, parse
from metaqnn.results import Result
from metaqnn.errors import UserError

PRECISIONS = ("auto", "float32", "bfloat16")

# XLA:CPU options for a candidate's programs: the classic fused-kernel emitter and LLVM -O1
# halve the compile, which was most of a CPU search's time, and training runs as fast
# (BENCHMARKS.md, "The default digits run"). Results agree to float rounding. A JAX that
# does not know an option compiles with its defaults instead.
CPU_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False,
                       "xla_backend_optimization_level": 1}
_rejected_options: set[str] = set()


def compile_lowered(lowered: Any, platform: str) -> Any:
  """`lowered.compile()`, with `CPU_COMPILE_OPTIONS` on CPUs where this JAX takes them."""
  options = {k: v for k, v in CPU_COMPILE_OPTIONS.items() if k not in _rejected_options}
  if platform != "cpu" or not options:
    return lowered.compile()
  try:
    return lowered.compile(compiler_options=options)
  except jax.errors.JaxRuntimeError as e:
    if "compile option" not in str(e):
      raise
    _rejected_options.update(options)
    return lowered.compile()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all local devices)."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.array(devices), ("data",))


# JAX's tracing caches keep something of every program: about 0.8 MiB per digits
# candidate, none of it reused by the next one. Cleared every this many candidates, which
# bounds it (clearing costs a re-trace of small operations, ~0.1 s on a CPU: amortised).
CLEAR_CACHES_EVERY = 20
_trained = itertools.count(1)  # candidates of this process (next() is atomic under the GIL)


def _release_caches() -> None:
  """`jax.clear_caches()` after every `CLEAR_CACHES_EVERY`-th candidate of the process
  (thread-safe under the GIL, as JAX's caches are; compiled programs in use are held by
  their owners and unaffected)."""
  if next(_trained) % CLEAR_CACHES_EVERY == 0:
    jax.clear_caches()


_NOTED: set = set()  # (used, available, batch sizes) already said
_noted_lock = threading.Lock()  # (workers build their trainers at once)


def dividing_devices(train_config: Any) -> list[jax.Device]:
  """The most local devices that both batch sizes divide among: the paper's batch of 128
  trains on 2 of 3 GPUs rather than not at all (a record's batch sizes cannot change, and
  a machine's devices can). Said once on stderr when some are left idle."""
  devices = jax.local_devices()
  sizes = (int(train_config.batch_size), int(train_config.eval_batch_size))
  n = max(k for k in range(1, len(devices) + 1) if all(s % k == 0 for s in sizes))
  with _noted_lock:
    new = n < len(devices) and (n, len(devices), sizes) not in _NOTED
    _NOTED.add((n, len(devices), sizes))
  if new:
    print(f"note: batch sizes {sizes[0]} and {sizes[1]} (config.train.batch_size, "
          f"eval_batch_size) divide among {n} of the {len(devices)} devices: training on "
          f"{n}; sizes that {len(devices)} divides would use all",
          file=sys.stderr)
  return devices[:n]


def make_optimizer(train_config: Any, learning_rate: Any) -> optax.GradientTransformation:
  """Adam (or SGD with momentum, `optimizer="sgd"`) with optional L2 weight decay on
  kernels (coupled, as Caffe's) at `learning_rate`.

  The state does not depend on `learning_rate`, which may be a traced scalar.
  """
  decay_kernels = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == "kernel", params)
  kind = train_config.get("optimizer", "adam")
  if kind == "adam":
    direction = optax.scale_by_adam(b1=train_config.adam_b1, b2=train_config.adam_b2,
                                    eps=train_config.adam_eps)
  elif kind == "sgd":
    direction = optax.trace(decay=float(train_config.momentum))
  else:
    raise UserError(f"unknown optimizer {kind!r}; use adam or sgd")
  return optax.chain(
      optax.add_decayed_weights(float(train_config.weight_decay), mask=decay_kernels),
      direction, optax.scale_by_learning_rate(learning_rate))


def augment(images: jax.Array, key: jax.Array, max_shift: int = 5) -> jax.Array:
  """Random horizontal mirroring and translation by up to `max_shift` pixels (zero fill).

  The moderate augmentation of the paper's final CIFAR training; uint8 in, uint8 out.
  """
  n, h, w, _ = images.shape
  flip_key, shift_key = jax.random.split(key)
  flip = jax.random.bernoulli(flip_key, 0.5, (n,))
  images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  offsets = jax.random.randint(shift_key, (n, 2), 0, 2 * max_shift + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def _epoch_key(seed: jax.Array, attempt: jax.Array, epoch: jax.Array) -> jax.Array:
  """The random key of one epoch, built on the device from integer arguments."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), attempt), epoch)


def build_train_epoch(model: models.CNN, train_config: Any, mesh: Mesh, num_train: int,
                      normalize: Callable[[jax.Array], jax.Array]) -> Callable:
  """A jitted `(params, opt_state, seed, attempt, epoch, lr, images, labels)` -> one epoch.

  Returns `(params, opt_state, mean_loss)`; params and optimiser state are donated.
  """
  batch = int(train_config.batch_size)
  steps = num_train // batch
  batch_sharding = NamedSharding(mesh, P(None, "data"))
  replicated = NamedSharding(mesh, P())
  use_augment = bool(train_config.get("augment", False))

  def loss_fn(params, x, y, key):
    logits = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def epoch_fn(params, opt_state, seed, attempt, epoch, lr, images, labels):
    tx = make_optimizer(train_config, lr)
    perm_key, dropout_key = jax.random.split(_epoch_key(seed, attempt, epoch))
    order = jax.random.permutation(perm_key, num_train)[:steps * batch].reshape(steps, batch)
    order = jax.lax.with_sharding_constraint(order, batch_sharding)

    def step(carry, xs):
      params, opt_state = carry
      idx, key = xs
      x, y = images[idx], labels[idx]
      if use_augment:
        key, aug_key = jax.random.split(key)
        x = augment(x, aug_key)
      x = normalize(x)
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), (order, jax.random.split(dropout_key, steps)))
    return params, opt_state, losses.mean()

  return jax.jit(epoch_fn, donate_argnums=(0, 1), out_shardings=replicated)


def _eval_batches(mesh: Mesh, batch_size: int, num_examples: int) -> tuple[int, int, Any]:
  """(batch, steps, sharding) to visit `num_examples` in sharded batches; the last batch
  is padded (indices clipped), so callers mask or drop the padding."""
  batch = min(batch_size, -(-num_examples // mesh.size) * mesh.size)
  return batch, -(-num_examples // batch), NamedSharding(mesh, P(None, "data"))


def build_evaluate(model: models.CNN, mesh: Mesh, batch_size: int, num_examples: int,
                   normalize: Callable[[jax.Array], jax.Array]) -> Callable:
  """A jitted `(params, images, labels) -> number correct`, every example counted once."""
  batch, steps, batch_sharding = _eval_batches(mesh, batch_size, num_examples)

  def eval_fn(params, images, labels):
    idx = jnp.arange(steps * batch).reshape(steps, batch)
    valid = jax.lax.with_sharding_constraint(idx < num_examples, batch_sharding)
    idx = jax.lax.with_sharding_constraint(jnp.minimum(idx, num_examples - 1), batch_sharding)

    def body(total, xs):
      idx, valid = xs
      logits = model.apply({"params": params}, normalize(images[idx]), train=False)
      return total + jnp.sum((jnp.argmax(logits, -1) == labels[idx]) & valid), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (idx, valid))
    return total

  return jax.jit(eval_fn)


def _classify_error(e: Exception) -> str:
  """'oom' for an out-of-memory error from the runtime, else 'error'."""
  text = str(e)
  return "oom" if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() else "error"


def compute_dtype(precision: str, platform: str) -> Any:
  """The compute dtype of `precision` ("auto", "float32", "bfloat16") on `platform`."""
  if precision not in PRECISIONS:
    raise UserError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
  if precision == "auto":
    return jnp.float32 if platform == "cpu" else jnp.bfloat16
  return jnp.dtype(precision).type


def resolved_precision(config: Any, stage: str = "train") -> str:
  """The dtype name a config's `train` (or `final`) trains in on this machine's devices."""
  precision = str(config[stage].get("dtype", "auto"))
  return jnp.dtype(compute_dtype(precision, jax.default_backend())).name


def _spec(x: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))


class DeviceData:
  """A data set's splits on one mesh, uint8 as stored, replicated; shared by the trainers
  of the same devices (workers overlapping on one GPU hold one copy)."""

  def __init__(self, dataset: input_pipeline.Dataset, mesh: Mesh):
    self.dataset = dataset
    self.replicated = NamedSharding(mesh, P())
    self._splits: dict[str, tuple[jax.Array, jax.Array]] = {}
    self._lock = threading.Lock()  # workers' first compiles ask at the same time

  def split(self, name: str) -> tuple[jax.Array, jax.Array]:
    with self._lock:
      if name not in self._splits:
        images = getattr(self.dataset, f"{name}_images")
        labels = getattr(self.dataset, f"{name}_labels")
        self._splits[name] = jax.device_put((np.asarray(images), np.asarray(labels)),
                                            self.replicated)
      return self._splits[name]


@dataclasses.dataclass
class Programs:
  """One architecture's network and compiled programs (freed with this object)."""
  model: models.CNN
  shapes: Any
  opt_shapes: Any
  train_epoch: Callable
  evaluate: Optional[Callable]


class Core:
  """What every training job shares: mesh, data on the devices, precision, convolution,
  optimiser; it compiles an architecture's programs and runs them.

  `train_config` is a `config.train`-like dict (batch sizes, optimiser, dropout, augment,
  dtype). `shared` maps device ids to `DeviceData`, to share one device copy of the data.
  """

  def __init__(self, train_config: Any, dataset: input_pipeline.Dataset,
               devices: Sequence[jax.Device] | None = None, *,
               shared: dict | None = None):
    self.train_config, self.dataset = train_config, dataset
    self.mesh = make_mesh(dividing_devices(train_config) if devices is None else devices)
    n_dev = self.mesh.size
    for field in ("batch_size", "eval_batch_size"):
      value = int(train_config[field])
      if value < 1 or value % n_dev:
        raise UserError(f"config.train.{field}={value} must be a positive multiple of the "
                         f"number of devices given ({n_dev}); without devices, as many "
                         "as the batch sizes divide among are used")
    if int(train_config.batch_size) > len(dataset.train_labels):
      raise UserError(f"config.train.batch_size={train_config.batch_size} is larger than "
                       f"the {len(dataset.train_labels)} training examples")
    platform = self.platform = self.mesh.devices.flat[0].platform
    self.dtype = compute_dtype(str(train_config.get("dtype", "auto")), platform)
    self.conv = models.conv_impl(platform)
    key = tuple(d.id for d in self.mesh.devices.flat)
    shared = {} if shared is None else shared
    if key not in shared or shared[key].dataset is not dataset:
      shared[key] = DeviceData(dataset, self.mesh)
    self.data = shared[key]
    self.input_shape = tuple(dataset.train_images.shape[1:])
    self.num_train = len(dataset.train_labels)
    self._compiler: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self._prepared: dict[tuple[str, Optional[str]], concurrent.futures.Future] = {}

  def normalize(self, images: jax.Array) -> jax.Array:
    return input_pipeline.normalize(images, self.dataset.preprocess, self.dataset.mean)

  def model(self, arch: Architecture) -> models.CNN:
    return models.CNN(arch, dropout=bool(self.train_config.dropout), dtype=self.dtype,
                      conv=self.conv)

  def compile(self, arch: Architecture, eval_split: Optional[str] = "val") -> Programs:
    """Compiles `arch`'s training epoch and (on `eval_split`) its evaluation, concurrently
    (XLA compiles one program on one thread; the two need not wait for each other)."""
    t = self.train_config
    model = self.model(arch)
    shapes = models.param_shapes(model, self.input_shape)
    opt_shapes = jax.eval_shape(make_optimizer(t, 0.0).init, shapes)
    placed = lambda tree: jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.data.replicated), tree)
    scalars = [jax.ShapeDtypeStruct((), np.uint32)] * 3 + [jax.ShapeDtypeStruct((), np.float32)]
    epoch = build_train_epoch(model, t, self.mesh, self.num_train, self.normalize)
    lowered = [epoch.lower(placed(shapes), placed(opt_shapes), *scalars,
                           *[_spec(x) for x in self.data.split("train")])]
    if eval_split is not None:
      images, labels = self.data.split(eval_split)
      evaluate = build_evaluate(model, self.mesh, int(t.eval_batch_size), len(labels),
                                self.normalize)
      lowered.append(evaluate.lower(placed(shapes), _spec(images), _spec(labels)))
    with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
      compiled = list(pool.map(lambda l: compile_lowered(l, self.platform), lowered))
    return Programs(model, shapes, opt_shapes, compiled[0],
                    compiled[1] if eval_split is not None else None)

  def prepare(self, arch: Architecture, eval_split: Optional[str] = "val") -> None:
    """Starts compiling `arch`'s programs on a background thread, for a later `programs`
    call: the next candidate compiles while this one trains. Holds two guesses at most
    (the oldest is dropped)."""
    key = (str(arch), eval_split)
    if key in self._prepared:
      return
    if self._compiler is None:
      self._compiler = concurrent.futures.ThreadPoolExecutor(
          1, thread_name_prefix="metaqnn-compile")
    self._prepared[key] = self._compiler.submit(self.compile, arch, eval_split)
    while len(self._prepared) > 2:
      self._prepared.pop(next(iter(self._prepared))).cancel()

  def programs(self, arch: Architecture, eval_split: Optional[str] = "val") -> Programs:
    """`arch`'s programs: those `prepare` compiled if it guessed `arch`, else compiled now.
    The same programs either way (XLA's compile is deterministic). A background compile
    that failed is done again here, so that a failure caused by running beside another
    candidate (memory) is not charged to `arch`; a real failure raises here."""
    prepared = self._prepared.pop((str(arch), eval_split), None)
    if prepared is not None:
      try:
        return prepared.result()
      except Exception:  # pylint: disable=broad-except
        pass
    return self.compile(arch, eval_split)

  def init_state(self, programs: Programs, seed: Sequence[int],
                 init_params: Any = None) -> tuple[Any, Any]:
    """Fresh (params, optimiser state) on the devices; `init_params` (a host tree) where
    given and shapes match (fine-tuning)."""
    params = models.init_params(programs.shapes, list(seed))
    if init_params is not None:  # keep every pretrained tensor whose shape still fits
      params = jax.tree.map(
          lambda new, old: np.asarray(old, new.dtype) if _fits(new, old) else new,
          params, _match(params, init_params), is_leaf=lambda x: x is None)
    opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), programs.opt_shapes)
    return jax.device_put((params, opt_state), self.data.replicated)

  def train_epoch(self, programs: Programs, state: tuple[Any, Any], seed: int, attempt: int,
                  epoch: int, lr: float) -> tuple[tuple[Any, Any], float]:
    """One epoch; returns the new state and the mean training loss."""
    params, opt_state, loss = programs.train_epoch(
        *state, np.uint32(seed), np.uint32(attempt), np.uint32(epoch), np.float32(lr),
        *self.data.split("train"))
    return (params, opt_state), float(loss)

  def accuracy(self, programs: Programs, params: Any) -> float:
    """Validation accuracy (the evaluation program is compiled for that split's size)."""
    images, labels = self.data.split("val")
    return int(programs.evaluate(params, images, labels)) / len(labels)


EarlyStop = Callable[[Architecture, list], Optional[tuple[float, Optional[float]]]]


class Trainer:
  """Trains candidates one after another on a data set held on the devices.

  `devices` form the data-parallel mesh; the training and evaluation batch sizes must
  divide over them (default: as many local devices as they divide among,
  `dividing_devices`). `early_stop(arch, val_accuracies)` is
  asked once, after `early_stop_epoch` epochs: (reward, predicted final accuracy or None)
  stops the candidate there, None lets it train on (`metaqnn.early_stop.Rule`).
  `on_epoch(attempt, epoch, val_accuracy, train_loss)` is called after every epoch.
  """

  def __init__(self, config: Any, dataset: input_pipeline.Dataset | None = None,
               devices: Sequence[jax.Device] | None = None, *, shared: dict | None = None,
               early_stop: Optional[EarlyStop] = None, early_stop_epoch: int = 0,
               on_epoch: Optional[Callable[[int, int, float, float], None]] = None):
    self.config, self.on_epoch = config, on_epoch
    t = config.train
    _check_schedule(t)
    self.dataset = dataset if dataset is not None else input_pipeline.load(config)
    ds = self.dataset
    if len(ds.val_labels) < 1:
      raise UserError("the data set has no validation examples to compute the reward on")
    self.core = Core(t, ds, devices, shared=shared)
    self.input_shape = self.core.input_shape
    self.num_classes = int(ds.num_classes)
    self.chance = 1.0 / self.num_classes
    # "No better than a random predictor" (SPEC section 4): the best constant guess, which
    # beats 1/k on data sets whose classes are not balanced (MNIST, SVHN, digits).
    majority = np.bincount(ds.val_labels).max() / len(ds.val_labels)
    self.threshold = max(self.chance, float(majority), float(t.restart_threshold))
    self.early_stop, self.early_stop_epoch = early_stop, int(early_stop_epoch)

  def check(self, arch: Architecture | str) -> Architecture:
    """The parsed `arch` if it fits this data set; else `ArchitectureError`."""
    arch = parse(arch)
    params = models.count_params(arch, self.input_shape)
    if arch.num_classes != self.num_classes:
      raise ArchitectureError(f"{arch} ends in SM({arch.num_classes}) but the data set has "
                              f"{self.num_classes} classes")
    _check_weights_fit(arch, params)
    return arch

  def prepare(self, arch: Architecture | str) -> None:
    """Compiles `arch` in the background: a guess at the next candidate (`Core.prepare`).
    An architecture that does not fit is left for `evaluate` to report."""
    try:
      self.core.prepare(self.check(arch))
    except ArchitectureError:
      pass

  def __call__(self, arch: Architecture | str) -> Result:
    return self.evaluate(arch)

  def evaluate(self, arch: Architecture | str) -> Result:
    """Trains `arch` and returns its result; a failing candidate never raises."""
    start = time.perf_counter()
    result = Result(accuracy=self.chance, arch=str(arch))
    try:
      arch = self.check(arch)
      result.arch = str(arch)
      result.params = models.count_params(arch, self.input_shape)
      result.flops = models.flops_per_example(arch, self.input_shape)
      self._train(arch, result, start)
    except ArchitectureError as e:
      self._fail(result, "error", str(e))
    except Exception as e:  # A candidate must not stop the search: report and go on.
      self._fail(result, _classify_error(e), f"{type(e).__name__}: {e}")
    _release_caches()
    result.seconds = time.perf_counter() - start
    return result

  def _fail(self, result: Result, status: str, message: str) -> None:
    """The chance reward; `best_val_accuracy` stays what was measured (the best epoch of
    any attempt: above chance, perhaps, yet under the threshold), None if nothing was (or
    only by attempts whose loss was not finite: their weights, and accuracies, mean
    nothing)."""
    seen = [a for c in result.curves if np.all(np.isfinite(c["train_loss"]))
            for a in c["val_accuracy"]]
    result.accuracy, result.best_val_accuracy = self.chance, max(seen, default=None)
    result.status, result.message = status, (message.splitlines() or [""])[0]

  def _train(self, arch: Architecture, result: Result, start: float) -> None:
    """The training loop with the restart rule (SPEC section 4), filling `result`.

    Each attempt's validation accuracies and losses go to `result.curves`. Between epochs
    the time limit (`train.max_seconds`) and early stopping may end the candidate.
    """
    t = self.config.train
    epochs, max_seconds = int(t.epochs), float(t.get("max_seconds", 0))
    waited = time.perf_counter()
    try:
      programs = self.core.programs(arch)
    finally:  # a compile that fails took its time too
      result.compile_seconds = time.perf_counter() - waited
    seed = int(self.config.seed)
    for attempt in range(int(t.max_restarts) + 1):
      result.restarts = attempt
      base_lr = float(t.learning_rate) * float(t.restart_lr_factor) ** attempt
      state = self.core.init_state(programs, [seed, attempt])
      curve = {"val_accuracy": [], "train_loss": []}
      result.curves.append(curve)
      for epoch in range(epochs):
        lr = base_lr * float(t.lr_decay) ** (epoch // int(t.lr_decay_every))
        state, loss = self.core.train_epoch(programs, state, seed, attempt, epoch, lr)
        signals.check()  # a Ctrl-C or SIGTERM that Python dropped (see `signals`)
        accuracy = self.core.accuracy(programs, state[0])
        curve["val_accuracy"].append(accuracy)
        curve["train_loss"].append(loss)
        if self.on_epoch is not None:
          self.on_epoch(attempt, epoch, accuracy, loss)
        finite = math.isfinite(loss)
        if epoch == 0 and (not finite or accuracy <= self.threshold):
          break  # Restart rule: no better than chance (or diverged) after the first epoch.
        accuracies = curve["val_accuracy"][:epoch + (1 if finite else 0)]
        result.best_val_accuracy, result.last_val_accuracy = max(accuracies), accuracies[-1]
        result.accuracy, result.epochs = result.best_val_accuracy, len(accuracies)
        if not finite:
          result.message = f"loss not finite in epoch {epoch + 1}; stopped there"
          return
        if epoch + 1 == epochs:
          return
        if max_seconds and time.perf_counter() - start > max_seconds:
          result.status = "timeout"
          result.message = (f"stopped after epoch {epoch + 1} of {epochs}: over "
                            f"train.max_seconds={max_seconds:g}")
          return
        if self.early_stop is not None and epoch + 1 == self.early_stop_epoch:
          stop = self.early_stop(arch, accuracies)
          if stop is not None:
            result.status, (result.accuracy, result.predicted_accuracy) = "stopped", stop
            result.message = f"stopped early after epoch {epoch + 1}" + (
                f": predicted final accuracy {stop[1]:.4f}" if stop[1] is not None else "")
            return
      more = attempt < int(t.max_restarts)
      if more and max_seconds and time.perf_counter() - start > max_seconds:
        self._fail(result, "timeout", f"no attempt learned within train.max_seconds="
                   f"{max_seconds:g}")
        result.last_val_accuracy, result.epochs = accuracy, 1
        return
    status = "nan" if not finite else "no_learning"
    first = max(c["val_accuracy"][0] for c in result.curves)  # the best first epoch
    why = "loss not finite" if not finite else (
        f"validation accuracy <= {self.threshold:.4f} (at best {first:.4f})")
    self._fail(result, status, f"{why} after the first epoch of each of "
               f"{int(t.max_restarts) + 1} attempts")
    result.last_val_accuracy, result.epochs = accuracy, 1


def final_learning_rates(config: Any) -> list[float]:
  """Per-epoch learning rates of the final stage (`config.final`).

  `final.schedule` is "lr:epochs,lr:epochs,..." (the paper's CIFAR-10 and SVHN
  schedules); if empty, `final.learning_rate` decays by `train.lr_decay` every
  `train.lr_decay_every` epochs for `final.epochs` epochs (the MNIST schedule).
  """
  f = config.final
  if f.schedule:
    parts = []
    for part in str(f.schedule).replace(" ", "").split(","):
      try:
        lr, epochs = part.split(":")
        parts.append((float(lr), int(epochs)))
      except ValueError:
        raise UserError(f"bad final.schedule {f.schedule!r}: expected lr:epochs pairs "
                         "such as 0.025:40,0.0125:40") from None
    _check_epochs("final.schedule", sum(n for _, n in parts))
    lrs = [lr for lr, n in parts for _ in range(n)]
  else:
    t = config.train
    _check_epochs("final.epochs", int(f.epochs))
    if int(t.lr_decay_every) < 1:  # (the final schedule decays on the search's steps)
      raise UserError(f"config.train.lr_decay_every={t.lr_decay_every} must be >= 1")
    lrs = [float(f.learning_rate) * float(t.lr_decay) ** (e // int(t.lr_decay_every))
           for e in range(int(f.epochs))]
  if not lrs or not all(0 < lr < math.inf for lr in lrs):
    raise UserError("the final schedule (config.final.epochs and learning_rate, or "
                    "config.final.schedule) must have at least one epoch and positive, "
                    "finite rates")
  return lrs


def build_predict(model: models.CNN, mesh: Mesh, batch_size: int, num_examples: int,
                  normalize: Callable[[jax.Array], jax.Array]) -> Callable:
  """A jitted `(params, images) -> class probabilities [num_examples, k]`."""
  batch, steps, batch_sharding = _eval_batches(mesh, batch_size, num_examples)

  def predict_fn(params, images):
    idx = jnp.minimum(jnp.arange(steps * batch), num_examples - 1).reshape(steps, batch)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    body = lambda _, i: (None, jax.nn.softmax(
        model.apply({"params": params}, normalize(images[i]), train=False)))
    _, probs = jax.lax.scan(body, None, idx)
    return probs.reshape(steps * batch, -1)[:num_examples]

  return jax.jit(predict_fn)


def final_train_config(config: Any) -> Any:
  """`config.train` with the final stage's optimizer, momentum, augmentation, weight decay
  and precision laid over it."""
  import ml_collections
  f = config.final
  t = ml_collections.ConfigDict(config.train.to_dict())
  t.update(optimizer=str(f.optimizer), momentum=float(f.momentum), augment=bool(f.augment),
           weight_decay=float(f.weight_decay))
  t["dtype"] = str(f.get("dtype", "auto"))
  return t


def _check_weights_fit(arch: Architecture, params: int) -> None:
  """An `ArchitectureError` where the float32 weights, gradients and momentum of `arch`
  alone would not fit in this machine's memory: refused in one line, not failed in XLA."""
  need, total = 3 * 4 * params, sources.memory_bytes()
  if total and need > total:
    raise ArchitectureError(
        f"{arch} has {params:,} parameters: its weights, gradients and momentum alone "
        f"take {need / 2**30:,.1f} GiB, more than this machine's {total / 2**30:,.1f} GiB")


def check_settings(config: Any, final: bool) -> None:
  """Refuses, in one line, an optimizer, precision or (`final`) final schedule that
  training would refuse only when it starts: before a search spends hours."""
  t = final_train_config(config) if final else config.train
  for field in ("batch_size", "eval_batch_size"):  # (devices: `dividing_devices`)
    if int(t[field]) < 1:
      raise UserError(f"config.train.{field}={t[field]} must be >= 1")
  if final:
    _check_ranges(t, final=True)
  else:
    _check_schedule(t)
  make_optimizer(t, 0.0)
  if str(t.get("dtype", "auto")) not in PRECISIONS:  # named by its field
    raise UserError(f"config.{'final' if final else 'train'}.dtype={t.get('dtype')!r} is "
                    f"no precision; use {', '.join(PRECISIONS)}")
  if final:
    final_learning_rates(config)


# More epochs than any run of this method trains (the paper's: 20 per candidate, 350 in
# the final stage): a value beyond is a typo, which would train for ever.
MAX_EPOCHS = 100_000


def _check_epochs(field: str, epochs: int) -> None:
  if epochs > MAX_EPOCHS:
    raise UserError(f"config.{field} asks for {epochs:,} epochs; at most {MAX_EPOCHS:,}")


def _check_schedule(t: Any) -> None:
  """Refuses, in one line, a search's epochs, decay, restarts, rates, optimizer or time
  limit that cannot train."""
  for field in ("epochs", "lr_decay_every"):
    if int(t[field]) < 1:
      raise UserError(f"config.train.{field}={t[field]} must be >= 1")
  _check_epochs("train.epochs", int(t.epochs))
  if int(t.max_restarts) < 0:
    raise UserError(f"config.train.max_restarts={t.max_restarts} must be >= 0")
  if not float(t.get("max_seconds", 0)) >= 0:  # (nan too)
    raise UserError(f"config.train.max_seconds={t.max_seconds} must be >= 0 (0 = none)")
  _check_ranges(t, final=False)


def _check_ranges(t: Any, final: bool) -> None:
  """Refuses, in one line, a rate, decay or optimizer setting outside its range: a rate of
  inf trains nothing but NaNs, and a restart threshold of 1 restarts every model."""
  unit = lambda v: 0 <= v < 1
  checks = [("weight_decay", lambda v: v >= 0, ">= 0"),  # (lr_decay: the final stage's too)
            ("lr_decay", lambda v: 0 < v <= 1, "in (0, 1]")]
  if str(t.get("optimizer", "adam")) == "sgd":
    checks.append(("momentum", unit, "in [0, 1)"))
  else:
    checks += [("adam_b1", unit, "in [0, 1)"), ("adam_b2", unit, "in [0, 1)"),
               ("adam_eps", lambda v: v > 0, "> 0")]
  if not final:  # the search's own schedule and restart rule
    checks += [("learning_rate", lambda v: v > 0, "> 0"),
               ("restart_lr_factor", lambda v: 0 < v <= 1, "in (0, 1]"),
               ("restart_threshold", unit, "in [0, 1)")]
  for field, ok, says in checks:
    if field not in t:  # a record made before the field existed
      continue
    try:
      value = float(t[field])
    except (TypeError, ValueError):
      value = math.nan
    if not (math.isfinite(value) and ok(value)):
      group = "final" if final and field in ("weight_decay", "momentum") else "train"
      raise UserError(f"config.{group}.{field}={t[field]} must be {says} (and finite)")


class FinalTrainer:
  """Trains one architecture with the final stage's settings on all the training data.

  `config.final` lays its optimizer, momentum, augmentation, weight decay and precision
  over `config.train`; there is no validation split and no restart rule.
  """

  def __init__(self, config: Any, dataset: input_pipeline.Dataset,
               devices: Sequence[jax.Device] | None = None):
    self.config, self.dataset = config, dataset
    self.train_config = final_train_config(config)
    self.lrs = final_learning_rates(config)
    self.core = Core(self.train_config, dataset, devices)
    self.input_shape = self.core.input_shape

  def count_params(self, arch: Architecture | str) -> int:
    arch = parse(arch)
    return models.count_params(arch, self.input_shape)

  def prepare(self, arch: Architecture | str) -> None:
    """Compiles `arch` in the background, for the `fit` after the current one."""
    self.core.prepare(parse(arch), eval_split=None)

  def fit(self, arch: Architecture | str, init_params: Any = None,
          seed: int | None = None,
          on_epoch: Optional[Callable[[dict], None]] = None) -> tuple[Any, list[dict]]:
    """Trains `arch` (from `init_params` where shapes match, e.g. fine-tuning) and
    returns (host parameters, per-epoch history); `on_epoch` gets each history entry.
    Stops early if the loss diverges: the last history entry then has a non-finite loss
    (see `diverged`)."""
    arch = parse(arch)
    seed = int(self.config.seed if seed is None else seed)
    programs = self.core.programs(arch, eval_split=None)
    state = self.core.init_state(programs, [seed, 1_000_003], init_params)
    history = []
    for epoch, lr in enumerate(self.lrs):
      state, loss = self.core.train_epoch(programs, state, seed, 0, epoch, lr)
      signals.check()
      history.append({"epoch": epoch + 1, "lr": lr, "loss": loss})
      if on_epoch is not None:
        on_epoch(history[-1])
      if not np.isfinite(loss):
        break
    return jax.device_get(state[0]), history

  def predict(self, arch: Architecture | str, params: Any, images: np.ndarray) -> np.ndarray:
    """Class probabilities of `images` (uint8, stored form) under `params`."""
    arch = parse(arch)
    fn = build_predict(self.core.model(arch), self.core.mesh,
                       int(self.config.train.eval_batch_size), len(images),
                       self.core.normalize)
    try:
      put = lambda x: jax.device_put(x, self.core.data.replicated)
      return np.asarray(fn(put(params), put(np.asarray(images))))
    finally:
      fn.clear_cache()


def diverged(history: list[dict]) -> bool:
  """Whether a `FinalTrainer.fit` history ended in a non-finite loss."""
  return bool(history) and not np.isfinite(history[-1]["loss"])


def pretrained_fit(shapes: Any, init_params: Any) -> tuple[int, int]:
  """How many tensors of a parameter tree (`shapes`) `init_params` gives, by the rule
  fine-tuning uses (`Core.init_state`), and how many it has."""
  fits = jax.tree.leaves(jax.tree.map(_fits, shapes, _match(shapes, init_params),
                                      is_leaf=lambda x: x is None))
  return sum(fits), len(fits)


def _fits(new: Any, old: Any) -> bool:
  """Whether a pretrained tensor `old` takes the place of `new`: same place, same shape."""
  return old is not None and np.shape(old) == np.shape(new)


def _match(template: Any, tree: Any) -> Any:
  """`tree` laid onto `template`'s structure: missing entries become None."""
  if isinstance(template, dict):
    tree = tree if isinstance(tree, dict) else {}
    return {k: _match(v, tree.get(k)) for k, v in template.items()}
  return tree

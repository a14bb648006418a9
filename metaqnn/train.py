"""Train and evaluate one sampled network (SPEC section 4), fast enough for thousands per process.

Design, for throughput over many small candidates:
- The data set is put on the devices once, as uint8, replicated; batches are gathered and
  normalised inside the compiled step.
- One epoch is one compiled call: a `lax.scan` over the batches of a permutation drawn on
  the device; the last partial batch is dropped (a fresh permutation each epoch). Evaluation
  is one call too, padded and masked so that every example counts exactly once.
- One compile per architecture: the learning rate and the random seed are arguments, so
  epochs and restarts reuse the executables. Params and optimiser state are donated.
- Parameters are initialised with NumPy on the host from `jax.eval_shape` shapes.
- Data parallel over a 1-D mesh ('data') with `jax.jit` and `NamedSharding`: the batch is
  sharded, params are replicated.
- After each candidate its executables are dropped (`jax.clear_caches`) so memory stays flat.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metaqnn import input_pipeline, models
from metaqnn.architecture import Architecture, ArchitectureError, parse

STATUSES = ("ok", "no_learning", "nan", "oom", "error")


@dataclasses.dataclass
class CandidateResult:
  """The outcome of training one architecture; `best_val_accuracy` is the reward."""
  arch: str
  best_val_accuracy: float
  last_val_accuracy: float
  restarts: int
  status: str  # One of STATUSES; anything but "ok" has best_val_accuracy = chance.
  message: str
  seconds: float
  epochs: int  # Epochs of the final attempt (each restarted attempt ran one more).
  params: int

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all local devices)."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.array(devices), ("data",))


def make_optimizer(train_config: Any, learning_rate: Any) -> optax.GradientTransformation:
  """Adam with optional L2 weight decay on kernels (coupled, as Caffe's) at `learning_rate`.

  The state does not depend on `learning_rate`, which may be a traced scalar.
  """
  decay_kernels = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == "kernel", params)
  return optax.chain(
      optax.add_decayed_weights(float(train_config.weight_decay), mask=decay_kernels),
      optax.scale_by_adam(b1=train_config.adam_b1, b2=train_config.adam_b2,
                          eps=train_config.adam_eps),
      optax.scale_by_learning_rate(learning_rate))


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
      x, y = normalize(images[idx]), labels[idx]
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), (order, jax.random.split(dropout_key, steps)))
    return params, opt_state, losses.mean()

  return jax.jit(epoch_fn, donate_argnums=(0, 1), out_shardings=replicated)


def build_evaluate(model: models.CNN, mesh: Mesh, batch_size: int, num_examples: int,
                   normalize: Callable[[jax.Array], jax.Array]) -> Callable:
  """A jitted `(params, images, labels) -> number correct`, every example counted once."""
  n_dev = mesh.size
  batch = min(batch_size, -(-num_examples // n_dev) * n_dev)
  steps = -(-num_examples // batch)
  batch_sharding = NamedSharding(mesh, P(None, "data"))

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


class Trainer:
  """Trains candidates one after another on a data set held on the devices.

  `devices` (default: all local devices) form the data-parallel mesh; the training and
  evaluation batch sizes must divide over them.
  """

  def __init__(self, config: Any, dataset: input_pipeline.Dataset | None = None,
               devices: Sequence[jax.Device] | None = None):
    self.config = config
    t = config.train
    self.mesh = make_mesh(devices)
    n_dev = self.mesh.size
    for field in ("batch_size", "eval_batch_size"):
      value = int(t[field])
      if value < 1 or value % n_dev:
        raise ValueError(f"config.train.{field}={value} must be a positive multiple of the "
                         f"number of devices ({n_dev})")
    for field in ("epochs", "lr_decay_every"):
      if int(t[field]) < 1:
        raise ValueError(f"config.train.{field}={t[field]} must be >= 1")
    if int(t.max_restarts) < 0:
      raise ValueError(f"config.train.max_restarts={t.max_restarts} must be >= 0")
    if not float(t.learning_rate) > 0:
      raise ValueError(f"config.train.learning_rate={t.learning_rate} must be > 0")
    self.dataset = dataset if dataset is not None else input_pipeline.load(config)
    ds = self.dataset
    if len(ds.train_labels) < t.batch_size:
      raise ValueError(f"config.train.batch_size={t.batch_size} is larger than the "
                       f"{len(ds.train_labels)} training examples")
    if len(ds.val_labels) < 1:
      raise ValueError("the data set has no validation examples to compute the reward on")
    self.input_shape = tuple(ds.train_images.shape[1:])
    self.num_classes = int(ds.num_classes)
    self.chance = 1.0 / self.num_classes
    self.threshold = max(self.chance, float(t.restart_threshold))
    replicated = NamedSharding(self.mesh, P())
    put = lambda x: jax.device_put(np.asarray(x), replicated)
    self._train_data = (put(ds.train_images), put(ds.train_labels))
    self._val_data = (put(ds.val_images), put(ds.val_labels))
    self._replicated = replicated

  def _normalize(self, images: jax.Array) -> jax.Array:
    return input_pipeline.normalize(images, self.dataset.preprocess, self.dataset.mean)

  def check(self, arch: Architecture | str) -> Architecture:
    """The parsed `arch` if it fits this data set; else `ArchitectureError`."""
    arch = parse(arch) if isinstance(arch, str) else arch
    models.layer_summary(arch, self.input_shape)
    if arch.num_classes != self.num_classes:
      raise ArchitectureError(f"{arch} ends in SM({arch.num_classes}) but the data set has "
                              f"{self.num_classes} classes")
    return arch

  def evaluate(self, arch: Architecture | str) -> CandidateResult:
    """Trains `arch` and returns its result; a failing candidate never raises."""
    start = time.perf_counter()
    name, params = str(arch), 0
    try:
      arch = self.check(arch)
      name, params = str(arch), models.count_params(arch, self.input_shape)
      result = self._train(arch)
    except ArchitectureError as e:
      result = self._failure(name, "error", str(e), params)
    except Exception as e:  # A candidate must not stop the search: report and go on.
      result = self._failure(name, _classify_error(e), f"{type(e).__name__}: {e}", params)
    result.seconds = time.perf_counter() - start
    return result

  def _failure(self, arch: str, status: str, message: str, params: int,
               last: float = 0.0, restarts: int = 0, epochs: int = 0) -> CandidateResult:
    return CandidateResult(arch=arch, best_val_accuracy=self.chance, last_val_accuracy=last,
                           restarts=restarts, status=status, message=message.splitlines()[0],
                           seconds=0.0, epochs=epochs, params=params)

  def _train(self, arch: Architecture) -> CandidateResult:
    """The training loop with the restart rule (SPEC section 4)."""
    t = self.config.train
    model = models.CNN(arch, dropout=bool(t.dropout))
    shapes = models.param_shapes(model, self.input_shape)
    n_params = models.tree_size(shapes)
    opt_shapes = jax.eval_shape(make_optimizer(t, 0.0).init, shapes)
    train_epoch = build_train_epoch(model, t, self.mesh, len(self.dataset.train_labels),
                                    self._normalize)
    evaluate = build_evaluate(model, self.mesh, int(t.eval_batch_size),
                              len(self.dataset.val_labels), self._normalize)
    try:
      return self._attempts(arch, model, shapes, opt_shapes, train_epoch, evaluate)
    finally:  # release this candidate's executables, and only its own: other workers
      train_epoch.clear_cache()  # may be compiling or training in other threads
      evaluate.clear_cache()

  def _attempts(self, arch, model, shapes, opt_shapes, train_epoch, evaluate):
    """Up to 1 + max_restarts attempts; the restart rule after each first epoch."""
    t = self.config.train
    n_params = models.tree_size(shapes)
    num_val = len(self.dataset.val_labels)
    seed = np.uint32(self.config.seed)
    for attempt in range(int(t.max_restarts) + 1):
      base_lr = float(t.learning_rate) * float(t.restart_lr_factor) ** attempt
      params = self._put(models.init_params(shapes, [int(self.config.seed), attempt]))
      opt_state = self._put(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), opt_shapes))
      accuracies = []
      for epoch in range(int(t.epochs)):
        lr = np.float32(base_lr * float(t.lr_decay) ** (epoch // int(t.lr_decay_every)))
        params, opt_state, loss = train_epoch(params, opt_state, seed, np.uint32(attempt),
                                              np.uint32(epoch), lr, *self._train_data)
        accuracy = int(evaluate(params, *self._val_data)) / num_val
        finite = bool(np.isfinite(float(loss)))
        if epoch == 0 and (not finite or accuracy <= self.threshold):
          break  # Restart rule: no better than chance (or diverged) after the first epoch.
        if not finite:
          return self._result(arch, n_params, accuracies, attempt,
                              f"loss not finite in epoch {epoch + 1}; stopped there")
        accuracies.append(accuracy)
      else:
        return self._result(arch, n_params, accuracies, attempt, "")
    status = "nan" if not finite else "no_learning"
    why = "loss not finite" if not finite else (
        f"validation accuracy {accuracy:.4f} <= {self.threshold:.4f}")
    return self._failure(str(arch), status, f"{why} after the first epoch of each of "
                         f"{int(t.max_restarts) + 1} attempts", n_params, last=accuracy,
                         restarts=int(t.max_restarts), epochs=1)

  def _result(self, arch: Architecture, n_params: int, accuracies: list[float], restarts: int,
              message: str) -> CandidateResult:
    return CandidateResult(arch=str(arch), best_val_accuracy=max(accuracies),
                           last_val_accuracy=accuracies[-1], restarts=restarts, status="ok",
                           message=message, seconds=0.0, epochs=len(accuracies),
                           params=n_params)

  def _put(self, tree: Any) -> Any:
    return jax.device_put(tree, self._replicated)

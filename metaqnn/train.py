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
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metaqnn import input_pipeline, models
from metaqnn.architecture import Architecture, ArchitectureError, parse

STATUSES = ("ok", "no_learning", "nan", "oom", "error", "timeout")


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
    raise ValueError(f"unknown optimizer {kind!r}; use adam or sgd")
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
    # "No better than a random predictor" (SPEC section 4): the best constant guess, which
    # beats 1/k on data sets whose classes are not balanced (MNIST, SVHN, digits).
    majority = np.bincount(ds.val_labels).max() / len(ds.val_labels)
    self.threshold = max(self.chance, float(majority), float(t.restart_threshold))
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
    limit, started = float(t.get("max_seconds", 0.0)), time.perf_counter()
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
        if limit and time.perf_counter() - started > limit:  # train.max_seconds
          best = max(accuracies + [accuracy] if finite else accuracies, default=self.chance)
          return CandidateResult(
              arch=str(arch), best_val_accuracy=best, last_val_accuracy=accuracy,
              restarts=attempt, status="timeout", seconds=0.0, epochs=epoch + 1,
              params=n_params, message=f"over train.max_seconds={limit:g} after epoch "
              f"{epoch + 1} of attempt {attempt + 1}; reward: the best accuracy reached")
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


def final_learning_rates(config: Any) -> list[float]:
  """Per-epoch learning rates of the final stage (`config.final`).

  `final.schedule` is "lr:epochs,lr:epochs,..." (the paper's CIFAR-10 and SVHN
  schedules); if empty, `final.learning_rate` decays by `train.lr_decay` every
  `train.lr_decay_every` epochs for `final.epochs` epochs (the MNIST schedule).
  """
  f = config.final
  if f.schedule:
    lrs = []
    for part in str(f.schedule).replace(" ", "").split(","):
      try:
        lr, epochs = part.split(":")
        lrs += [float(lr)] * int(epochs)
      except ValueError:
        raise ValueError(f"bad final.schedule {f.schedule!r}: expected lr:epochs pairs "
                         "such as 0.025:40,0.0125:40") from None
  else:
    t = config.train
    lrs = [float(f.learning_rate) * float(t.lr_decay) ** (e // int(t.lr_decay_every))
           for e in range(int(f.epochs))]
  if not lrs or min(lrs) <= 0:
    raise ValueError("the final schedule must have at least one epoch and positive rates")
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


class FinalTrainer:
  """Trains one architecture with the final stage's settings on all the training data.

  `config.final` lays its optimizer, momentum, augmentation and schedule over
  `config.train`; there is no validation split and no restart rule.
  """

  def __init__(self, config: Any, dataset: input_pipeline.Dataset,
               devices: Sequence[jax.Device] | None = None):
    import ml_collections
    f = config.final
    self.config, self.dataset = config, dataset
    self.train_config = ml_collections.ConfigDict(config.train.to_dict())
    self.train_config.update(optimizer=str(f.optimizer), momentum=float(f.momentum),
                             augment=bool(f.augment), weight_decay=float(f.weight_decay))
    self.lrs = final_learning_rates(config)
    self.mesh = make_mesh(devices)
    for field in ("batch_size", "eval_batch_size"):
      value = int(config.train[field])
      if value < 1 or value % self.mesh.size:
        raise ValueError(f"config.train.{field}={value} must be a positive multiple of "
                         f"the number of devices ({self.mesh.size})")
    if int(config.train.batch_size) > len(dataset.train_labels):
      raise ValueError(f"config.train.batch_size={config.train.batch_size} is larger than "
                       f"the {len(dataset.train_labels)} training examples")
    self.input_shape = tuple(dataset.train_images.shape[1:])
    self._replicated = NamedSharding(self.mesh, P())
    self._train_data = jax.device_put((np.asarray(dataset.train_images),
                                       np.asarray(dataset.train_labels)), self._replicated)

  def _normalize(self, images: jax.Array) -> jax.Array:
    return input_pipeline.normalize(images, self.dataset.preprocess, self.dataset.mean)

  def count_params(self, arch: Architecture | str) -> int:
    arch = parse(arch) if isinstance(arch, str) else arch
    return models.count_params(arch, self.input_shape)

  def fit(self, arch: Architecture | str, init_params: Any = None,
          seed: int | None = None) -> tuple[Any, list[dict]]:
    """Trains `arch` (from `init_params` where shapes match, e.g. fine-tuning) and
    returns (host parameters, per-epoch history). Stops early if the loss diverges: the
    last history entry then has a non-finite loss (see `diverged`)."""
    arch = parse(arch) if isinstance(arch, str) else arch
    t = self.train_config
    model = models.CNN(arch, dropout=bool(t.dropout))
    shapes = models.param_shapes(model, self.input_shape)
    seed = int(self.config.seed if seed is None else seed)
    params = models.init_params(shapes, [seed, 1_000_003])
    if init_params is not None:  # keep every pretrained tensor whose shape still fits
      params = jax.tree.map(
          lambda new, old: np.asarray(old, new.dtype)
          if old is not None and np.shape(old) == np.shape(new) else new,
          params, _match(params, init_params), is_leaf=lambda x: x is None)
    opt_shapes = jax.eval_shape(make_optimizer(t, 0.0).init, shapes)
    opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), opt_shapes)
    params, opt_state = jax.device_put((params, opt_state), self._replicated)
    train_epoch = build_train_epoch(model, t, self.mesh, len(self.dataset.train_labels),
                                    self._normalize)
    history = []
    try:
      for epoch, lr in enumerate(self.lrs):
        params, opt_state, loss = train_epoch(params, opt_state, np.uint32(seed),
                                              np.uint32(0), np.uint32(epoch), np.float32(lr),
                                              *self._train_data)
        history.append({"epoch": epoch + 1, "lr": lr, "loss": float(loss)})
        if not np.isfinite(float(loss)):
          break
      return jax.device_get(params), history
    finally:
      train_epoch.clear_cache()

  def predict(self, arch: Architecture | str, params: Any, images: np.ndarray) -> np.ndarray:
    """Class probabilities of `images` (uint8, stored form) under `params`."""
    arch = parse(arch) if isinstance(arch, str) else arch
    model = models.CNN(arch, dropout=bool(self.train_config.dropout))
    fn = build_predict(model, self.mesh, int(self.config.train.eval_batch_size), len(images),
                       self._normalize)
    try:
      return np.asarray(fn(jax.device_put(params, self._replicated),
                           jax.device_put(np.asarray(images), self._replicated)))
    finally:
      fn.clear_cache()


def diverged(history: list[dict]) -> bool:
  """Whether a `FinalTrainer.fit` history ended in a non-finite loss."""
  return bool(history) and not np.isfinite(history[-1]["loss"])


def _match(template: Any, tree: Any) -> Any:
  """`tree` laid onto `template`'s structure: missing entries become None."""
  if isinstance(template, dict):
    tree = tree if isinstance(tree, dict) else {}
    return {k: _match(v, tree.get(k)) for k, v in template.items()}
  return tree

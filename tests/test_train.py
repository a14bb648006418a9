"""Tests of metaqnn.train and the two CLIs, on digits with tiny epochs and tiny nets."""

import itertools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import digits
from metaqnn import input_pipeline, models, train
from metaqnn.architecture import parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = "[C(16,3,1), P(2,2), FC(32), SM(10)]"


def tiny_config(**train_overrides):
  config = digits.get_config()
  config.train.epochs = 2
  config.train.batch_size = 32
  config.train.eval_batch_size = 64
  config.train.update(train_overrides)
  return config


@pytest.fixture(scope="module")
def dataset():
  return input_pipeline.load(tiny_config())


def count_compiles(fn):
  """Runs fn() and returns (its result, the number of XLA compilations it caused)."""
  events = []
  listener = lambda name, *args, **kwargs: events.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    result = fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return result, events.count("/jax/core/compile/backend_compile_duration")


def test_learns_digits_with_one_compile_per_program(dataset):
  trainer = train.Trainer(tiny_config(epochs=3), dataset)
  result, compiles = count_compiles(lambda: trainer.evaluate(SMALL))
  assert result.status == "ok", result.message
  assert result.best_val_accuracy > 0.7
  assert result.epochs == 3 and result.restarts == 0
  assert result.params == models.count_params(parse(SMALL), (8, 8, 1))
  assert compiles == 2  # One training epoch and one evaluation program for all epochs.
  assert json.loads(json.dumps(result.to_json()))["arch"] == SMALL
  assert result.accuracy == result.best_val_accuracy
  assert result.flops == models.flops_per_example(parse(SMALL), (8, 8, 1))
  [curve] = result.curves  # one attempt, one entry per epoch
  assert len(curve["val_accuracy"]) == len(curve["train_loss"]) == 3
  assert max(curve["val_accuracy"]) == result.best_val_accuracy
  assert curve["train_loss"][-1] < curve["train_loss"][0]


def test_restart_rule_gives_chance_when_it_never_learns(dataset):
  trainer = train.Trainer(tiny_config(restart_threshold=0.999, max_restarts=2), dataset)
  result, compiles = count_compiles(lambda: trainer.evaluate(SMALL))
  assert result.status == "no_learning"
  assert result.restarts == 2
  assert [len(c["val_accuracy"]) for c in result.curves] == [1, 1, 1]  # every attempt
  assert result.accuracy == pytest.approx(0.1)  # the chance reward
  assert compiles == 2  # Restarts reuse the executables.
  best = max(c["val_accuracy"][0] for c in result.curves)
  # What it measured, not the chance reward: a "best" under its own last accuracy, before.
  assert result.best_val_accuracy == best >= result.last_val_accuracy
  assert result.message == (f"validation accuracy <= 0.9990 (at best {best:.4f}) after the "
                            "first epoch of each of 3 attempts")


def test_a_constant_guess_counts_as_not_learning(dataset):
  """On unbalanced classes the majority class beats 1/k: it must still trigger a restart."""
  trainer = train.Trainer(tiny_config(), dataset)
  majority = np.bincount(dataset.val_labels).max() / len(dataset.val_labels)
  assert majority > 0.1 and trainer.threshold == pytest.approx(majority)


def test_nan_loss_is_a_status_not_a_crash(dataset):
  trainer = train.Trainer(tiny_config(learning_rate=1e30, max_restarts=1), dataset)
  result = trainer.evaluate(SMALL)
  assert result.status == "nan"
  assert result.accuracy == pytest.approx(0.1) and result.best_val_accuracy is None
  assert "not finite" in result.message


def test_a_failure_keeps_what_its_finite_attempts_measured(dataset):
  """An attempt whose loss was not finite measured nothing (its weights are NaN); one
  whose loss was finite did, whatever the last attempt's status."""
  from metaqnn.results import Result
  trainer = train.Trainer(tiny_config(), dataset)
  nan, fine = ({"val_accuracy": [0.3], "train_loss": [float("nan")]},
               {"val_accuracy": [0.12], "train_loss": [2.3]})
  for curves, status, best in (([nan, fine], "no_learning", 0.12),
                               ([fine, nan], "nan", 0.12), ([nan, nan], "nan", None)):
    result = Result(accuracy=0.0, curves=curves)
    trainer._fail(result, status, "why")
    assert (result.accuracy, result.best_val_accuracy) == (pytest.approx(0.1), best)


@pytest.mark.parametrize("error,status", [
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 bytes"), "oom"),
    (RuntimeError("compile failed\nsecond line"), "error"),
])
def test_runtime_failures_are_reported(dataset, monkeypatch, error, status):
  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(train, "build_train_epoch", fail)
  result = train.Trainer(tiny_config(), dataset).evaluate(SMALL)
  assert result.status == status
  assert result.accuracy == pytest.approx(0.1) and result.best_val_accuracy is None
  assert "\n" not in result.message


def test_bad_architecture_is_an_error_result(dataset):
  trainer = train.Trainer(tiny_config(), dataset)
  assert trainer.evaluate("[P(9,2), SM(10)]").status == "error"
  assert "classes" in trainer.evaluate("[FC(8), SM(7)]").message
  assert trainer.evaluate("[C(8,3,1)").status == "error"


def test_indivisible_batch_raises(dataset):
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    train.Trainer(tiny_config(batch_size=30), dataset, devices=jax.devices()[:4])
  with pytest.raises(ValueError, match="eval_batch_size"):
    train.Trainer(tiny_config(eval_batch_size=66), dataset, devices=jax.devices()[:4])


def test_batch_sizes_that_all_devices_do_not_divide_train_on_fewer(dataset, capsys,
                                                                  monkeypatch):
  """On all local devices (4 here), as a data-parallel search and the final stage train: a
  batch of 30 trains on 2 of them, said once, instead of being refused (a record's batch
  sizes are fixed; a machine's device count is not)."""
  monkeypatch.setattr(train, "_NOTED", set())  # (said once per process)
  for _ in range(2):
    trainer = train.Trainer(tiny_config(batch_size=30), dataset)  # (and eval 64)
    assert trainer.core.mesh.size == 2
  assert capsys.readouterr().err.count("divide among 2 of the 4 devices: training on 2") == 1
  assert trainer.evaluate(SMALL).status == "ok"
  assert train.Trainer(tiny_config(), dataset).core.mesh.size == 4


def test_one_candidate_worker_trains_on_one_device(dataset):
  """parallel=candidate with one worker: one device, as asked (it used to take all)."""
  from metaqnn import executors
  config = tiny_config(batch_size=30)  # (which 4 devices would not divide)
  config.parallel, config.num_workers = "candidate", 1
  made = []
  executors.local(config, None, lambda devices: made.append(devices))
  assert made == [jax.local_devices()[:1]]


def test_jax_caches_are_cleared_every_few_candidates(dataset, monkeypatch):
  """JAX's tracing caches keep about 0.8 MiB of every program (BENCHMARKS.md, memory):
  the trainer clears them every `CLEAR_CACHES_EVERY` candidates, failed ones included,
  and a candidate trained after a clear trains as before."""
  cleared = []
  monkeypatch.setattr(train, "CLEAR_CACHES_EVERY", 2)
  monkeypatch.setattr(train, "_trained", itertools.count(1))
  real = jax.clear_caches
  monkeypatch.setattr(jax, "clear_caches", lambda: (cleared.append(1), real()))
  trainer = train.Trainer(tiny_config(epochs=1), dataset)
  first = trainer.evaluate(SMALL)
  assert not cleared
  assert trainer.evaluate("[FC(8), SM(7)]").status == "error" and len(cleared) == 1
  again = trainer.evaluate(SMALL)
  assert again.status == "ok" and again.curves == first.curves
  assert len(cleared) == 1


def test_bfloat16_candidate_learns_with_float32_params(dataset):
  """Mixed precision: bfloat16 compute, float32 parameters and optimiser state."""
  trainer = train.Trainer(tiny_config(epochs=3, dtype="bfloat16"), dataset)
  assert trainer.core.dtype == jax.numpy.bfloat16
  result = trainer.evaluate(SMALL)
  assert result.status == "ok", result.message
  assert result.best_val_accuracy > 0.7
  programs = trainer.core.compile(parse(SMALL))
  params, opt_state = trainer.core.init_state(programs, [0])
  (params, opt_state), loss = trainer.core.train_epoch(programs, (params, opt_state), 0, 0,
                                                       0, 1e-3)
  assert {str(x.dtype) for x in jax.tree.leaves((params, opt_state))} <= {"float32", "int32"}
  logits = programs.model.apply({"params": params}, np.zeros((2, 8, 8, 1), np.float32))
  assert logits.dtype == np.float32 and np.isfinite(loss)


def test_auto_precision_is_float32_on_cpu_and_bfloat16_elsewhere():
  assert train.compute_dtype("auto", "cpu") == jax.numpy.float32
  assert train.compute_dtype("auto", "gpu") == jax.numpy.bfloat16
  assert train.compute_dtype("auto", "tpu") == jax.numpy.bfloat16
  assert train.compute_dtype("float32", "gpu") == jax.numpy.float32
  with pytest.raises(ValueError, match="unknown precision"):
    train.compute_dtype("fp8", "gpu")


def test_time_limit_stops_a_candidate_with_its_best_accuracy(dataset):
  trainer = train.Trainer(tiny_config(epochs=5, max_seconds=1e-9), dataset)
  result = trainer.evaluate(SMALL)
  assert result.status == "timeout", result.message
  assert result.epochs < 5
  assert result.accuracy == result.best_val_accuracy > 0.1


def test_early_stop_hook_stops_at_its_epoch(dataset):
  asked = []
  def rule(arch, accuracies):
    asked.append(list(accuracies))
    return 0.4, 0.5
  trainer = train.Trainer(tiny_config(epochs=4), dataset, early_stop=rule, early_stop_epoch=2)
  result = trainer.evaluate(SMALL)
  assert result.status == "stopped" and result.predicted_accuracy == 0.5
  assert result.accuracy == 0.4  # the reward the rule gave
  assert len(asked) == 1 and len(asked[0]) == 2 == result.epochs
  assert result.curves[-1]["val_accuracy"] == asked[0]


def test_a_dropped_stop_ends_training_after_the_epoch(dataset, dropped_stop):
  """A Ctrl-C or SIGTERM whose KeyboardInterrupt Python dropped (`signals`) ends the
  candidate after the epoch in progress, not after all of them."""
  epochs = []
  trainer = train.Trainer(tiny_config(epochs=4), dataset)
  trainer.on_epoch = lambda attempt, epoch, accuracy, loss: epochs.append(epoch)
  with pytest.raises(KeyboardInterrupt):
    trainer.evaluate(SMALL)
  assert epochs == []  # raised after the first epoch's update, before its evaluation


def test_workers_on_the_same_devices_share_one_copy_of_the_data(dataset):
  shared = {}
  a = train.Trainer(tiny_config(), dataset, shared=shared)
  b = train.Trainer(tiny_config(), dataset, shared=shared)
  assert a.core.data is b.core.data and len(shared) == 1


def test_same_seed_same_result(dataset):
  a = train.Trainer(tiny_config(epochs=1), dataset).evaluate(SMALL)
  b = train.Trainer(tiny_config(epochs=1), dataset).evaluate(SMALL)
  assert (a.best_val_accuracy, a.last_val_accuracy) == (b.best_val_accuracy, b.last_val_accuracy)


def _one_epoch(config, dataset, devices):
  """Params after one epoch from the same init, on a mesh over `devices`."""
  core = train.Trainer(config, dataset, devices=devices).core
  programs = core.compile(parse("[C(8,3,1), C(8,3,1), P(2,2), FC(16), SM(10)]"))
  state = core.init_state(programs, [0])
  (params, _), loss = core.train_epoch(programs, state, 0, 0, 0, 1e-3)
  return jax.device_get(params), loss, round(core.accuracy(programs, params) * 
                                             len(dataset.val_labels))


def test_one_and_four_devices_agree(dataset):
  assert len(jax.devices()) >= 4
  p1, loss1, correct1 = _one_epoch(tiny_config(), dataset, jax.devices()[:1])
  p4, loss4, correct4 = _one_epoch(tiny_config(), dataset, jax.devices()[:4])
  assert loss1 == pytest.approx(loss4, rel=1e-5)
  assert abs(correct1 - correct4) <= 1
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_evaluate_counts_every_example_once(dataset):
  # All-zero params give all-zero logits: every prediction is class 0.
  model = models.CNN(parse("[C(4,1,1), GAP(10), SM(10)]"))
  shapes = models.param_shapes(model, (8, 8, 1))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  mesh = train.make_mesh(jax.devices()[:4])
  labels = dataset.val_labels[:37]
  evaluate = train.build_evaluate(model, mesh, 8, 37, lambda x: x.astype(np.float32))
  assert int(evaluate(zeros, dataset.val_images[:37], labels)) == int(np.sum(labels == 0))


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_train_one_cli_end_to_end():
  proc = _run("metaqnn.train_one", "--config=configs/digits.py", f"--arch={SMALL}",
              "--config.train.epochs=1", "--config.train.batch_size=32")
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["arch"] == SMALL and result["status"] == "ok"
  assert {"best_val_accuracy", "restarts", "seconds"} <= set(result)


@pytest.mark.slow
def test_train_one_stops_in_one_line():
  import signal
  proc = subprocess.Popen([sys.executable, "-m", "metaqnn.train_one", "--config=configs/digits.py",
                           f"--arch={SMALL}", "--config.train.epochs=50"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert "compiling" in proc.stderr.readline()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143 and out == "", (out, err)
  *epochs, last = err.strip().splitlines()  # the epochs trained by then, then one line
  assert last == "interrupted" and all(l.startswith("attempt ") for l in epochs), err


@pytest.mark.parametrize("args", [
    ["--config=configs/digits.py", "--arch=[C(8,3,1), P(9,2), SM(10)]"],
    ["--config=configs/digits.py", "--arch=[C(8,3,1)"],
    ["--config=configs/digits.py", f"--arch={SMALL}", "--config.train.batch_size=0"],
    ["--config=configs/digits.py", f"--arch={SMALL}", "--config.train.no_such_field=1"],
    ["--config=configs/no_such_config.py", f"--arch={SMALL}"],
    ["--config=configs/digits.py", "--arch=[C(99999999999999999999,3,1), SM(10)]"],
    ["--config=configs/digits.py", f"--arch={SMALL}", "--config.train.learning_rate=inf"],
    # Checked as a search checks them (a NumPy traceback; a NaN limit taken).
    ["--config=configs/digits.py", f"--arch={SMALL}", "--config.seed=-1"],
    ["--config=configs/digits.py", f"--arch={SMALL}", "--config.seed=4294967296"],
    ["--config=configs/digits.py", f"--arch={SMALL}", "--config.train.max_seconds=nan"],
])
def test_train_one_cli_errors_are_one_line(args):
  proc = _run("metaqnn.train_one", *args)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_arch_cli_json():
  proc = _run("metaqnn.arch", "params", "[C(64,3,1), P(2,2), FC(128), SM(10)]",
              "--input_shape=32,32,3", "--num_classes=10")
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert out["arch"] == "[C(64,3,1), P(2,2), FC(128), SM(10)]"
  assert out["params"] == (27 * 64 + 64) + (16 * 16 * 64 * 128 + 128) + (128 * 10 + 10)
  assert out["output_shape"] == [10]
  assert [l["output_shape"] for l in out["layers"]] == [[32, 32, 64], [16, 16, 64], [128], [10]]
  assert sum(l["params"] for l in out["layers"]) == out["params"]
  assert out["flops"] > 0


@pytest.mark.parametrize("args", [
    ["params", "[C(64,3,1), P(2,2), SM(10)"],
    ["params", "[P(9,2), SM(10)]", "--input_shape=8,8,1"],
    ["params", "[C(8,3,1), SM(10)]", "--num_classes=100"],
    ["params", "[C(8,3,1), SM(10)]", "--input_shape=8,x,1"],
    ["params", "[C(8,3,1), SM(10)]", "--input_shape=99999999999999999999,99999999999999999999,3"],
])
def test_arch_cli_errors_are_one_line(args):
  proc = _run("metaqnn.arch", *args)
  assert proc.returncode != 0 and proc.stdout == ""
  assert "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_prepared_candidate_compiles_in_the_background_and_trains_the_same(dataset):
  """`prepare` (the search's guess at its next candidate) compiles off the critical path;
  a right guess is used as is, a wrong one is dropped, and results do not change."""
  other = "[C(32,1,1), GAP(10), SM(10)]"
  plain = train.Trainer(tiny_config(), dataset).evaluate(SMALL)
  trainer = train.Trainer(tiny_config(), dataset)
  trainer.prepare(SMALL)
  [(key, future)] = trainer.core._prepared.items()
  future.result()  # compiled before the candidate starts...
  hit, compiles = count_compiles(lambda: trainer.evaluate(SMALL))
  assert compiles == 0 and not trainer.core._prepared  # ...and not compiled again
  trainer.prepare(other)  # a wrong guess
  [wrong] = trainer.core._prepared.values()
  wrong.result()
  miss, compiles = count_compiles(lambda: trainer.evaluate(SMALL))
  assert compiles == 2
  assert hit.curves == miss.curves == plain.curves
  # The compile left on the critical path is recorded: none for the right guess.
  assert 0 < miss.compile_seconds <= miss.seconds
  assert hit.compile_seconds < miss.compile_seconds / 2
  trainer.prepare("[C(16,3,1), FC(32), SM(7)]")  # does not fit the data: left to evaluate
  assert len(trainer.core._prepared) == 1
  for arch in ("[C(16,1,1), SM(10)]", "[C(32,1,1), SM(10)]", "[C(64,1,1), SM(10)]"):
    trainer.prepare(arch)
  assert len(trainer.core._prepared) == 2  # the oldest guesses are dropped


def test_a_failed_background_compile_is_done_again_in_place(dataset, monkeypatch):
  """A guess whose background compile failed (for example for memory, beside another
  candidate) is compiled again when it is the candidate: its result is not the failure."""
  trainer = train.Trainer(tiny_config(), dataset)
  compile_now = train.Core.compile
  monkeypatch.setattr(train.Core, "compile", lambda self, *a: (_ for _ in ()).throw(
      MemoryError("beside another candidate")))
  trainer.prepare(SMALL)
  [future] = trainer.core._prepared.values()
  assert isinstance(future.exception(), MemoryError)
  monkeypatch.setattr(train.Core, "compile", compile_now)
  assert trainer.evaluate(SMALL).status == "ok"


def test_every_command_imports_beside_the_others():
  """A notebook may import any of them: absl flags are defined once, by the command run."""
  names = ["arch", "early_stop", "finalize", "inspect", "main", "plots", "predict", "space",
           "train_one", "transfer"]
  code = "; ".join(f"import metaqnn.{n}" for n in names)
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr

"""The final stage, transfer, and checkpoint inspection on digits (tiny settings)."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from metaqnn import budget
from metaqnn import config_lib
from metaqnn import finalize
from metaqnn import inspect as inspect_lib
from metaqnn import models
from metaqnn import search
from metaqnn import signals
from metaqnn import transfer
from metaqnn.architecture import parse
from metaqnn.errors import UserError
from metaqnn.store import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config():
  config = config_lib.base_config("digits")
  config.dataset.val_fraction = 0.2
  config.space.max_depth = 3
  config.space.conv_filters = (8, 16)
  config.space.conv_kernels = (3,)
  config.space.pools = ((2, 2),)
  config.space.fc_units = (32,)
  config.space.size_bins = (4, 2, 1)
  config.space.fc_max_side = 3
  config.search.schedule = "1.0:8,0.1:4"
  config.search.replay_samples = 5
  config.evaluator = "synthetic"
  config.train.batch_size = 32
  config.train.eval_batch_size = 128
  config.final.epochs = 3
  config.final.learning_rate = 3e-3
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("search") / "w")
  search.run_search(digits_config(), workdir, log_interval=1e9, tensorboard=False)
  results = finalize.finalize(workdir, top=3, ensemble=2)
  return workdir, results


def test_results_json_and_table(finished):
  workdir, results = finished
  on_disk = json.load(open(os.path.join(workdir, "final", "results.json")))
  assert on_disk == json.loads(json.dumps(results))
  assert len(results["models"]) == 3
  val = [m["val_accuracy"] for m in results["models"]]
  assert val == sorted(val, reverse=True)
  for m in results["models"]:
    assert set(m) >= {"arch", "params", "val_accuracy", "test_accuracy", "checkpoint"}
    assert 0.0 <= m["test_accuracy"] <= 1.0 and os.path.isdir(m["checkpoint"])
    assert m["params"] == models.count_params(parse(m["arch"]), (8, 8, 1))
    assert m["flops"] == budget.cost(m["arch"], (8, 8, 1))[1] > 0  # a FLOPs budget's check
  assert results["ensemble"]["size"] == 2 and 0.0 < results["ensemble"]["test_accuracy"] <= 1
  assert results["test_examples"] > 300
  table = open(os.path.join(workdir, "final", "results.md")).read()
  assert "| rank | model architecture | params | FLOPs |" in table
  # a dry run: the scores that ranked them are made up, and not shown as errors
  assert results["evaluator"] == "synthetic" and "| synthetic score |" in table
  assert "Ensemble of the top 2" in table
  summary = inspect_lib.summarize(workdir)
  assert summary["final"]["ensemble"]["size"] == 2
  assert [m["search_reward"] for m in results["models"]] == val  # no objective: the same
  first = results["models"][0]
  assert (f" 1. test {first['test_accuracy']:.4f}  search val {first['val_accuracy']:.4f}  "
          in inspect_lib.render(summary))


def test_inspect_names_the_checkpoints_of_a_moved_work_directory(finished, tmp_path):
  workdir, results = finished
  moved = str(tmp_path / "moved")
  shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns(".lock"))
  final = inspect_lib.summarize(moved)["final"]
  assert [m["checkpoint"] for m in final["models"]] == [
      m["checkpoint"].replace(workdir, moved) for m in results["models"]]
  assert all(os.path.isdir(m["checkpoint"]) for m in final["models"])


@pytest.mark.parametrize("damage", ["{bad", '{"models": 5}', '{"models": [{"arch": 1}]}',
                                    '{"models": [], "ensemble": "x"}', "no_checkpoint"])
def test_a_damaged_results_json_is_one_line_in_inspect(finished, tmp_path, damage):
  workdir, _ = finished
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".lock"))
  path = os.path.join(copy, "final", "results.json")
  if damage == "no_checkpoint":  # valid but for one model's field, which inspect prints
    results = json.load(open(path))
    del results["models"][0]["checkpoint"]
    damage = json.dumps(results)
  with open(path, "w") as f:
    f.write(damage)
  with pytest.raises(UserError, match=r"results.json (is damaged|is not a final stage's).*; run "
                     "python -m metaqnn.finalize --workdir=.* to write it again") as e:
    inspect_lib.summarize(copy)
  assert "\n" not in str(e.value)


def test_a_search_on_data_in_memory_is_finalized_with_that_data(tmp_path):
  """config.dataset does not load data given in memory: the final stage takes it too, and
  refuses to guess without it (it used to retrain on config.dataset, or fail on its
  class count)."""
  import dataclasses
  import numpy as np
  from metaqnn import input_pipeline
  config = digits_config()
  config.search.schedule, config.evaluator = "1.0:2", "train"
  config.train.epochs, config.final.epochs = 1, 1
  full = input_pipeline.load(config)
  keep = lambda y: y < 3  # three of the ten classes: not what config.dataset holds
  data = dataclasses.replace(
      full, name="mine", num_classes=3,
      train_images=full.train_images[keep(full.train_labels)],
      train_labels=full.train_labels[keep(full.train_labels)],
      val_images=full.val_images[keep(full.val_labels)],
      val_labels=full.val_labels[keep(full.val_labels)],
      test_images=full.test_images[keep(full.test_labels)],
      test_labels=full.test_labels[keep(full.test_labels)])
  workdir = str(tmp_path / "w")
  search.run_search(config, workdir, dataset=data, log_interval=1e9, tensorboard=False)
  with pytest.raises(UserError, match="given its data in memory .*finalize.finalize"
                     r"\(workdir, dataset=...\)"):
    finalize.finalize(workdir, top=1, ensemble=1)
  other = dataclasses.replace(data, test_labels=(data.test_labels + 1) % 3)
  with pytest.raises(WorkdirError, match="other data"):
    finalize.finalize(workdir, top=1, ensemble=1, dataset=other)
  assert not os.path.exists(os.path.join(workdir, "final"))
  results = finalize.finalize(workdir, top=1, ensemble=1, dataset=data)
  assert results["test_examples"] == len(data.test_labels)
  meta = json.load(open(os.path.join(os.path.dirname(results["models"][0]["checkpoint"]),
                                     "meta.json")))
  assert meta["class_names"] is None and len(meta["normalization"]["mean"]) == 1
  merged = np.concatenate([data.train_images, data.val_images])
  assert meta["normalization"]["mean"][0] == pytest.approx(merged.mean() / 255, rel=1e-5)


def test_resume_trains_only_unfinished_models(finished, capsys):
  workdir, results = finished
  metas = [os.path.join(os.path.dirname(m["checkpoint"]), "meta.json")
           for m in results["models"]]
  stamps = [os.path.getmtime(m) for m in metas]
  os.remove(metas[1])  # as if killed while the second model trained
  capsys.readouterr()
  again = finalize.finalize(workdir, top=3, ensemble=2)
  out = capsys.readouterr().out
  assert ("2 of the 3 final models were trained by an earlier run and are kept; training "
          "the other 1") in out
  assert "final 2/3: epoch 1/3, loss " in out  # a line of progress per model at least
  assert os.path.getmtime(metas[0]) == stamps[0] and os.path.getmtime(metas[2]) == stamps[2]
  assert os.path.exists(metas[1])
  assert [m["arch"] for m in again["models"]] == [m["arch"] for m in results["models"]]


def test_the_final_stage_never_runs_beside_its_search_or_another(finished):
  """Both would train the same models: it holds the search's lock, and is refused while
  another process (here: this one, through another open file) holds it."""
  from metaqnn import store as store_lib
  workdir, _ = finished
  for take in (lambda: store_lib.lock(workdir),
               lambda: store_lib.Store(workdir, store_lib.stored_fingerprint(workdir)).close):
    release = take()
    try:
      assert store_lib.holder(workdir)["pid"] == os.getpid()
      with pytest.raises(store_lib.WorkdirError, match="this process is already running a "
                         "search or its final stage in "):
        finalize.finalize(workdir)
    finally:
      release()
    assert store_lib.holder(workdir) is None  # released, its file removed
  for left in ("999999999 1.0\n",  # left by a kill -9: no such process
               *(["1 1.0\n"] if os.path.exists("/proc/locks") else [])):  # or its id
    # taken by another since (told apart by the lock itself, where Linux lists locks)
    open(os.path.join(workdir, store_lib.LOCK_FILE), "w").write(left)
    assert store_lib.holder(workdir) is None
  os.remove(os.path.join(workdir, store_lib.LOCK_FILE))


def test_a_search_scored_by_a_users_function_is_not_shown_as_validation_errors(tmp_path):
  config = digits_config()
  config.evaluator = "train"  # as a user's config says; the function gives the scores
  work = str(tmp_path / "w")
  search.run_search(config, work, log_interval=1e9, tensorboard=False,
                    evaluate=lambda arch: 0.5 + 0.01 * len(arch.layers))
  results = finalize.finalize(work, top=1, ensemble=0)
  assert results["evaluator"] == "function"
  assert "| search score |" in finalize.results_table(results)


def test_final_models_ranked_by_an_objective_show_the_reward_that_ranked_them():
  """Else rank 1 at 15% validation error above rank 2 at 9% reads as a wrong order; and
  the validation accuracy is named as the search's, not the retrained model's."""
  def model(rank, val, reward):
    return {"rank": rank, "arch": "[SM(10)]", "params": 650, "flops": 1300,
            "val_accuracy": val, "test_accuracy": 0.8, "diverged": False,
            "search_reward": reward, "checkpoint": f"/w/final/{rank}/checkpoint"}
  results = {"dataset": "digits", "evaluator": "train", "test_examples": 359,
             "ensemble": None, "models": [model(1, 0.8472, 0.9280), model(2, 0.9132, 0.9010)]}
  table = finalize.results_table(results)
  assert "| search reward | search val. error (%) | test error (%) |" in table, table
  assert "| 0.9280 | 15.28 | 20.00 |" in table and "before it was retrained" in table
  results["models"] = [model(1, 0.9132, 0.9132)]  # no objective: no reward column
  assert "search reward" not in finalize.results_table(results)


def test_the_early_check_of_final_settings_lets_a_record_without_a_config_resume(tmp_path):
  """A run killed between making its record and storing its config: nothing to check."""
  from metaqnn import store as store_lib
  work = str(tmp_path / "w")
  store_lib.Store(work, {"space": "x"}).close()
  finalize.check_kept_before(work, digits_config())


def test_a_stopped_final_stage_holds_its_lock_until_its_models_stop(finished, monkeypatch):
  """A stop (in a notebook, whose process lives on) leaves models finishing their epoch
  and writing their files: no other final stage may start beside them until they end."""
  import concurrent.futures
  import threading
  import time
  from metaqnn import store as store_lib
  workdir, _ = finished
  go = threading.Event()

  def stopped(*args):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.submit(go.wait, 10)
    args[-1].append(pool)  # as _in_threads hands over a model still running
    raise KeyboardInterrupt

  monkeypatch.setattr(finalize, "_finalize", stopped)
  with pytest.raises(KeyboardInterrupt):
    finalize.finalize(workdir)
  assert store_lib.holder(workdir)["pid"] == os.getpid()  # held while it runs
  go.set()
  for _ in range(100):
    if store_lib.holder(workdir) is None:
      break
    time.sleep(0.05)
  assert store_lib.holder(workdir) is None  # released once it ended
  # A command exits at once on a stop (cli.stop), its threads with it: it frees the lock
  # then, and the thread that would have done so later does nothing.
  go.clear()
  with pytest.raises(KeyboardInterrupt):
    finalize.finalize(workdir)
  assert store_lib.holder(workdir)["pid"] == os.getpid()
  signals.release_pending()
  assert not os.path.exists(os.path.join(workdir, store_lib.LOCK_FILE))
  go.set()
  time.sleep(0.2)  # the thread's own release: nothing left to do
  store_lib.lock(workdir)()  # free: taken and released again


def test_an_unfinished_search_is_said_so_and_paths_are_absolute(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  search.run_search(digits_config(), "w", log_interval=1e9, tensorboard=False, max_models=5)
  results = finalize.finalize("w", top=1, ensemble=0)
  done = inspect_lib.summarize("w")["unique_models"]
  assert f"(its search is not finished: {done} of 12 unique models)" in capsys.readouterr().out
  checkpoint = results["models"][0]["checkpoint"]
  assert checkpoint == str(tmp_path / "w" / "final" / os.path.basename(
      os.path.dirname(checkpoint)) / "checkpoint") and os.path.isdir(checkpoint)


def test_a_damaged_meta_json_is_one_line(finished):
  """A final model's meta.json edited by hand or half-written by another tool: one line
  that says what to move aside, and nothing overwritten."""
  workdir, results = finished
  meta = os.path.join(os.path.dirname(results["models"][1]["checkpoint"]), "meta.json")
  kept = open(meta).read()
  try:
    with open(meta, "w") as f:
      f.write(kept[:40])
    with pytest.raises(UserError, match=f"{meta} is damaged .*; move {os.path.dirname(meta)} "
                       "aside and run again") as e:
      finalize.finalize(workdir, top=3, ensemble=2)
    assert "\n" not in str(e.value) and open(meta).read() == kept[:40]
  finally:
    with open(meta, "w") as f:
      f.write(kept)
  probs = os.path.join(os.path.dirname(meta), "test_probs.npy")
  kept = open(probs, "rb").read()
  try:  # what it was tested with, cut short
    with open(probs, "wb") as f:
      f.write(kept[:50])
    with pytest.raises(UserError, match=f"the final model {os.path.dirname(meta)} is "
                       "incomplete or damaged \\(ValueError"):
      finalize.finalize(workdir, top=3, ensemble=2)
  finally:
    with open(probs, "wb") as f:
      f.write(kept)
  # Not finite (garbled in place): refused, not averaged into the ensemble's figure.
  import numpy as np
  good = np.load(probs)
  try:
    np.save(probs, np.where(np.arange(good.size).reshape(good.shape) % 7, good, np.nan))
    results_json = open(os.path.join(workdir, "final", "results.json")).read()
    with pytest.raises(UserError, match="incomplete or damaged \\(ValueError: test_probs.npy "
                       "holds float32 .* not finite probabilities"):
      finalize.finalize(workdir, top=3, ensemble=2)
    assert open(os.path.join(workdir, "final", "results.json")).read() == results_json
  finally:
    with open(probs, "wb") as f:
      f.write(kept)
  # Removed: found before any model is trained (a model asked for beside it is not).
  os.rename(probs, probs + ".aside")
  try:
    with pytest.raises(UserError, match=f"the final model {os.path.dirname(meta)} is "
                       "incomplete \\(no test_probs.npy\\); move .* aside"):
      finalize.finalize(workdir, top=4, ensemble=2)
  finally:
    os.rename(probs + ".aside", probs)
  assert not os.path.exists(os.path.join(workdir, "final", finalize.model_dir(
      "", finalize.top_models(workdir, 4)[1][3].arch)))


def test_final_models_of_other_settings_are_not_passed_off_as_these(finished, capsys):
  """Asked for another final schedule, the final stage refuses in one line and keeps
  the models it has: they are not these, and nothing is overwritten."""
  workdir, results = finished
  metas = [os.path.join(os.path.dirname(m["checkpoint"]), "meta.json")
           for m in results["models"]]
  before = [open(m).read() for m in metas]
  for override, named in (({"final.epochs": 5}, "final schedule"),
                          ({"final.learning_rate": 0.1}, "final schedule"),
                          ({"final.optimizer": "sgd"}, "final.optimizer"),
                          ({"train.batch_size": 16}, "train.batch_size")):
    with pytest.raises(ValueError, match=f"other settings \\(differs in: {named}"):
      finalize.finalize(workdir, top=3, ensemble=2, config_overrides=override)
  assert [open(m).read() for m in metas] == before
  # Before a resumed search stores its settings (main): its own final settings refused;
  # another seed, space or budget left to the search, which refuses it as another
  # search, with that advice, whatever its final settings.
  config, _ = finalize.top_models(workdir, 0)
  config.final.epochs = 5
  from metaqnn import store as store_lib
  kept = lambda settings: finalize.check_kept_before(workdir, settings)
  record = open(os.path.join(workdir, "metaqnn.db"), "rb").read()
  with pytest.raises(ValueError, match="other settings \\(differs in: final schedule"):
    search.run_search(config, workdir, check_resume=kept)
  assert open(os.path.join(workdir, "metaqnn.db"), "rb").read() == record  # untouched,
  assert store_lib.holder(workdir) is None and not os.path.exists(  # and unlocked
      os.path.join(workdir, store_lib.LOCK_FILE))
  for field, value in (("seed", 3), ("space.max_depth", 4), ("budget.max_params", 10**6)):
    other = copy.deepcopy(config)
    other.update_from_flattened_dict({field: value})
    with pytest.raises(WorkdirError, match="made for another search"):
      search.run_search(other, workdir, check_resume=kept)
  config.final.epochs, config.dataset.final_extra = 3, True  # read by the final stage only
  with pytest.raises(ValueError, match="differs in: dataset.final_extra"):
    search.run_search(config, workdir, check_resume=kept)
  # Settings that do not change a final model are not refused: how many run at once,
  # the search's own precision (final.dtype is used), a search setting.
  assert finalize.finalize(workdir, top=3, ensemble=2, config_overrides={
      "final.num_workers": 1, "train.dtype": "float32", "train.epochs": 2})["models"] == \
      results["models"]
  # final.dtype compared as the precision it trains in: on CPUs "auto" is float32.
  assert finalize.finalize(workdir, top=3, ensemble=2, config_overrides={
      "final.dtype": "float32"})["models"] == results["models"]
  with pytest.raises(ValueError, match=r"differs in: final.dtype \(it trained in float32\)"):
    finalize.finalize(workdir, top=3, ensemble=2, config_overrides={"final.dtype": "bfloat16"})


def test_the_same_command_again_keeps_its_final_models(tmp_path, capsys):
  """A search trained for real, finalized, then run again as it was: the resume's own
  bookkeeping (the precision it records) is no other final setting."""
  config = digits_config()
  config.evaluator = "train"
  config.search.schedule = "1.0:2"
  config.train.epochs = config.final.epochs = 1
  workdir = str(tmp_path / "w")
  for _ in range(2):
    search.run_search(config, workdir, log_interval=1e9, tensorboard=False)
    results = finalize.finalize(workdir, top=1, ensemble=0)
  assert "nothing to train" in capsys.readouterr().out and len(results["models"]) == 1
  assert results["evaluator"] == "train" and "| search val. error (%) |" in finalize.results_table(
      results)


def test_one_model_at_a_time_gives_the_same_results(finished, tmp_path):
  """On CPUs with two cores or more the final stage trains two models at once (auto); one
  at a time (with the next one compiled in the background) gives identical results."""
  workdir, results = finished
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("final"))
  serial = finalize.finalize(copy, top=3, ensemble=2,
                             config_overrides={"final.num_workers": 1})
  strip = lambda r: [{k: v for k, v in m.items() if k != "checkpoint"} for m in r["models"]]
  assert strip(serial) == strip(results) and serial["ensemble"] == results["ensemble"]


def test_checkpoint_inspection(finished, monkeypatch):
  workdir, results = finished
  path = results["models"][0]["checkpoint"]
  from metaqnn import input_pipeline
  both = input_pipeline.load_both
  monkeypatch.setattr(input_pipeline, "load_both", lambda c: pytest.fail(
      "a search split made for the test split (a transfer run may have none)"))
  s = inspect_lib.checkpoint_summary(path, split="test")
  monkeypatch.setattr(input_pipeline, "load_both", both)
  folder = inspect_lib.checkpoint_summary(os.path.dirname(path), split="val")  # as listed
  assert folder["arch"] == s["arch"] and folder["evaluated"]["split"] == "val"
  assert s["evaluated"]["held_out"] and not folder["evaluated"]["held_out"]
  assert "(trained on it: not held out)" in inspect_lib.render_checkpoint(folder)
  assert s["arch"] == results["models"][0]["arch"]
  assert s["params"] == results["models"][0]["params"]
  assert s["evaluated"]["accuracy"] == pytest.approx(results["models"][0]["test_accuracy"])
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-m", "metaqnn.inspect", f"--checkpoint={path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert s["arch"] in out.stdout and "test_accuracy" in out.stdout


def test_transfer_from_scratch_and_fine_tuned(finished, tmp_path, capsys):
  workdir, results = finished
  config = digits_config()
  config.final.learning_rate = 1e-12  # fine-tuning this gently keeps the source model
  config.final.epochs = 1
  source = results["models"][0]
  tuned = transfer.transfer(config, source["arch"], str(tmp_path / "tuned"),
                            init_checkpoint=source["checkpoint"])
  scratch = transfer.transfer(config, source["arch"], str(tmp_path / "scratch"))
  out, err = capsys.readouterr()  # the command's stdout is its JSON line alone
  assert out == "" and "loading the data" in err and "fine-tuning: " in err
  assert tuned["test_accuracy"] == pytest.approx(source["test_accuracy"], abs=0.01)
  assert scratch["test_accuracy"] < source["test_accuracy"] - 0.2
  assert transfer.with_classes(parse("[C(8,3,1), GAP(10), SM(10)]"), 100) == parse(
      "[C(8,3,1), GAP(100), SM(100)]")
  assert transfer.best_of(workdir) == inspect_lib.summarize(workdir)["top"][0]["arch"]
  err = capsys.readouterr().err  # what the best was chosen by, said
  assert "ranked its models by the synthetic evaluator's made-up scores" in err
  assert "not finished" not in err
  unfinished = str(tmp_path / "unfinished")
  search.run_search(digits_config(), unfinished, log_interval=1e9, tensorboard=False,
                    max_models=3)
  transfer.best_of(unfinished)
  assert re.search(r"is not finished \(\d of 12 unique models\): its best so far is taken",
                   capsys.readouterr().err)
  # A checkpoint of which nothing fits is refused, not silently trained from scratch.
  with pytest.raises(ValueError, match="none of the .* tensors fits"):
    transfer.transfer(config, "[FC(7), SM(10)]", str(tmp_path / "nothing"),
                      init_checkpoint=source["checkpoint"])
  assert not (tmp_path / "nothing").exists()


def test_a_diverged_final_model_stays_out_of_the_ensemble(finished, tmp_path):
  workdir, _ = finished
  import shutil
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("final", ".lock"))
  results = finalize.finalize(copy, top=2, ensemble=2,
                              config_overrides={"final.learning_rate": 1e12})
  assert all(m["diverged"] for m in results["models"])
  assert results["ensemble"] is None
  assert "diverged" in open(os.path.join(copy, "final", "results.md")).read()


def test_transfer_refuses_a_different_run_in_the_same_directory(finished, tmp_path,
                                                                monkeypatch):
  workdir, results = finished
  config = digits_config()
  config.final.epochs = 1
  arch = results["models"][0]["arch"]
  transfer.transfer(config, arch, str(tmp_path / "t"))
  with pytest.raises(ValueError, match="another transfer run .*differs in: source_arch"):
    transfer.transfer(config, results["models"][1]["arch"], str(tmp_path / "t"))
  longer = digits_config()
  longer.final.epochs = 2  # another final schedule is another run, not the same one
  with pytest.raises(ValueError, match="another transfer run .*differs in: final schedule"):
    transfer.transfer(longer, arch, str(tmp_path / "t"))
  # The same run, given from another directory with a relative path: done already, and
  # only read (a finished run in a read-only folder is reported too).
  from metaqnn import store as store_lib
  for name in ("lock", "folders_to_make"):
    monkeypatch.setattr(store_lib, name, lambda *a: pytest.fail("a finished run written to"))
  monkeypatch.chdir(tmp_path)
  assert transfer.transfer(config, arch, "t")["arch"] == parse(arch).__str__()
  # Settings that change nothing of the result are not another run: where the data is,
  # the search's own split and time limit.
  moved = digits_config()
  moved.final.epochs = 1
  moved.dataset.data_dir, moved.dataset.val_fraction = "/elsewhere", 0.3
  moved.train.max_seconds = 5.0
  assert transfer.transfer(moved, arch, "t")["arch"] == parse(arch).__str__()
  # A run recorded before a setting existed (and with paths as typed) is the same run.
  meta_path = tmp_path / "t" / "meta.json"
  meta = json.loads(meta_path.read_text())
  del meta["config"]["train"]["dtype"]
  meta_path.write_text(json.dumps(meta))
  assert transfer.transfer(config, arch, "t")["arch"] == parse(arch).__str__()


def test_transfer_into_a_path_it_cannot_use_fails_before_training(finished, tmp_path,
                                                                  monkeypatch):
  from metaqnn import train

  def fit(*args, **kwargs):
    raise AssertionError("it trained first")

  monkeypatch.setattr(train.FinalTrainer, "fit", fit)
  workdir, results = finished
  (tmp_path / "afile").write_text("mine")
  for bad, says in (("afile", "is a file, not a directory"),
                    ("afile/sub", f"cannot make .*afile/sub: {tmp_path / 'afile'} is a file")):
    with pytest.raises(ValueError, match=says):  # before its data is loaded
      transfer.transfer(digits_config(), results["models"][0]["arch"], str(tmp_path / bad))
  assert (tmp_path / "afile").read_text() == "mine"
  # Refused after its folders were made (no tensor of the checkpoint fits): none is left.
  with pytest.raises(ValueError, match="none of the"):
    transfer.transfer(digits_config(), "[FC(7), SM(10)]", str(tmp_path / "new" / "a" / "b"),
                      init_checkpoint=results["models"][0]["checkpoint"])
  assert not (tmp_path / "new").exists()
  # An architecture too deep for these images; a stop while it trains: none is left.
  with pytest.raises(ValueError, match="window 2x2 is larger than its 1x1 input"):
    transfer.transfer(digits_config(), "[P(2,2), P(2,2), P(2,2), P(2,2), SM(10)]",
                      str(tmp_path / "deep"))
  # A search's work directory given as the checkpoint: named so (not "damaged").
  with pytest.raises(ValueError, match="is a search's work directory; give one of its final"):
    transfer.transfer(digits_config(), results["models"][0]["arch"], str(tmp_path / "from"),
                      init_checkpoint=workdir)
  assert not (tmp_path / "from").exists()
  # Another run into the same directory (its lock held): refused, nothing trained, and
  # the directory left as it was.
  from metaqnn import store as store_lib
  busy = str(tmp_path / "busy")
  os.makedirs(busy)
  other = subprocess.Popen(
      [sys.executable, "-c", "import sys; from metaqnn import store; r = store.lock(sys.argv[1]); "
       "print('held', flush=True); sys.stdin.read()", busy],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, text=True)
  try:
    assert other.stdout.readline() == "held\n"
    with pytest.raises(ValueError, match="another metaqnn process is running a transfer "
                       "into .*busy; wait for it to finish"):
      transfer.transfer(digits_config(), results["models"][0]["arch"], busy)
    assert os.listdir(busy) == [store_lib.LOCK_FILE]  # the holder's
  finally:
    other.communicate("")
  release = store_lib.lock(busy)  # this process's own (a notebook's earlier call)
  try:
    with pytest.raises(ValueError, match="this process is already running a transfer into"):
      transfer.transfer(digits_config(), results["models"][0]["arch"], busy)
  finally:
    release()
  assert os.listdir(busy) == []
  monkeypatch.setattr(train.FinalTrainer, "fit", lambda *a, **k: (_ for _ in ()).throw(
      KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):
    transfer.transfer(digits_config(), results["models"][0]["arch"], str(tmp_path / "stop"))
  assert not (tmp_path / "deep").exists() and not (tmp_path / "stop").exists()


def test_a_checkpoint_is_named_by_its_model_folder_too_and_a_damaged_one_is_one_line(
    finished, tmp_path):
  from metaqnn import checkpoints
  _, results = finished
  path = results["models"][0]["checkpoint"]
  folder = os.path.dirname(path)
  assert checkpoints.checkpoint_dir(folder) == path == checkpoints.checkpoint_dir(path)
  copy = tmp_path / "m"
  shutil.copytree(folder, copy)
  for name in os.listdir(copy / "checkpoint"):  # its tensors lost
    if os.path.isdir(copy / "checkpoint" / name):
      shutil.rmtree(copy / "checkpoint" / name)
  with pytest.raises(UserError, match=f"cannot read the checkpoint at {copy}/checkpoint "
                     "\\(damaged or incomplete: .*\\); move the model's folder aside") as e:
    checkpoints.restore(str(copy))
  assert "\n" not in str(e.value)


def test_an_interrupt_starts_no_more_final_models(finished, tmp_path, monkeypatch):
  """Ctrl-C (or a failure) in the two-at-a-time final stage: the models not yet started
  are not trained; the finished ones stay, so the next run resumes."""
  import time
  from metaqnn import train
  workdir, _ = finished
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("final"))
  calls = []

  def fit(self, arch, *args, **kwargs):
    calls.append(str(arch))
    if len(calls) == 1:
      raise KeyboardInterrupt
    time.sleep(0.5)  # still training when the interrupt reaches the caller
    raise RuntimeError("stopped by the test")

  monkeypatch.setattr(train.FinalTrainer, "fit", fit)
  with pytest.raises(KeyboardInterrupt):
    finalize.finalize(copy, top=3, ensemble=2, config_overrides={"final.num_workers": 2})
  time.sleep(1.0)  # a model already started may finish; none may start
  assert 1 <= len(calls) <= 2  # the third model never started


def test_a_dropped_interrupt_starts_no_final_model(finished, tmp_path, monkeypatch,
                                                   dropped_stop):
  """With several final models at once the workers do not check for a dropped Ctrl-C or
  SIGTERM (`signals`); the stage's own loop does, before it starts any."""
  from metaqnn import train
  workdir, _ = finished
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("final"))
  calls = []
  monkeypatch.setattr(train.FinalTrainer, "fit", lambda self, arch, *a, **k: calls.append(arch))
  with pytest.raises(KeyboardInterrupt):
    finalize.finalize(copy, top=3, ensemble=2, config_overrides={"final.num_workers": 2})
  assert calls == []


def test_with_a_soft_objective_the_final_stage_reports_validation_accuracy(tmp_path):
  """The ranking follows the reward (the user's trade-off), but the table's validation
  figure is the validation accuracy, not the objective's reward."""
  config = digits_config()
  config.search.schedule = "1.0:6"
  config.budget.objective, config.budget.target, config.budget.weight = "params", 500, -0.5
  workdir = str(tmp_path / "w")
  search.run_search(config, workdir, log_interval=1e9, tensorboard=False)
  results = finalize.finalize(workdir, top=2, ensemble=1)
  recs = {m["arch"]: m for m in inspect_lib.summarize(workdir)["models"]}
  for m in results["models"]:
    rec = recs[m["arch"]]
    assert rec["accuracy"] != pytest.approx(rec["best_val_accuracy"])  # a scaled reward
    assert m["val_accuracy"] == pytest.approx(rec["best_val_accuracy"])


def test_an_ensemble_larger_than_the_final_models_is_said(finished, capsys, tmp_path):
  """Nothing is trained again (all three are finished); the ensemble is capped, and said."""
  workdir, results = finished
  again = finalize.finalize(workdir, top=3, ensemble=5)
  out = capsys.readouterr().out
  assert "the ensemble takes all 3 final models: 5 were asked (final.ensemble, or " \
      "finalize's --ensemble), more than the top 3" in out
  assert "training" not in out and again["ensemble"]["size"] == 3
  finalize.finalize(workdir, top=3, ensemble=2)  # as the other tests expect it
  # Fewer models trained fully than the top asked: that is the limit said, not the top.
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".lock"))
  n = len(finalize.top_models(copy, 100)[1])
  finalize.finalize(copy, top=n + 1, ensemble=n + 1)
  assert (f"the ensemble takes all {n} final models: {n + 1} were asked (final.ensemble, "
          f"or finalize's --ensemble), more than the {n} models of the search that trained "
          "fully") in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("command", ["finalize", "transfer"])
def test_a_sigterm_before_training_is_a_clean_stop(finished, tmp_path, command):
  """The handlers are installed first: a SIGTERM while the data loads or JAX starts
  (where Python may drop the interrupt) is one line and status 143, not a silent kill."""
  import signal
  workdir, results = finished
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("final", ".lock"))
  args = {"finalize": ["-m", "metaqnn.finalize", f"--workdir={copy}"],
          "transfer": ["-m", "metaqnn.transfer", "--config=configs/digits.py",
                       f"--arch={results['models'][0]['arch']}",
                       f"--workdir={tmp_path / 't'}"]}[command]
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  says = proc.stdout if command == "finalize" else proc.stderr  # (transfer's stdout: JSON)
  first = says.readline()
  assert "loading the data" in first, first
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted;")


@pytest.mark.slow
def test_a_run_its_final_stage_would_refuse_changes_nothing(tmp_path):
  """The same search again with other final settings is refused before it stores them:
  `finalize` without flags then still finds the settings its models were trained with."""
  work = str(tmp_path / "w")
  run = lambda *args: subprocess.run(
      [sys.executable, *args], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      capture_output=True, text=True, timeout=600)
  tiny = ["--config.search.schedule=1.0:2", "--config.train.epochs=1", "--config.final.top=1",
          "--config.final.ensemble=1", "--config.final.plots=False"]
  first = run("-m", "metaqnn.main", "--config=configs/digits.py", f"--workdir={work}", *tiny,
              "--config.final.epochs=1")
  assert first.returncode == 0, first.stderr
  stored = open(os.path.join(work, "metaqnn.db"), "rb").read()
  again = run("-m", "metaqnn.main", "--config=configs/digits.py", f"--workdir={work}", *tiny,
              "--config.final.epochs=2")
  assert again.returncode == 2 and again.stdout == ""
  assert "holds final models trained with other settings (differs in: final schedule" in \
      again.stderr and len(again.stderr.splitlines()) == 1, again.stderr
  assert open(os.path.join(work, "metaqnn.db"), "rb").read() == stored
  final = run("-m", "metaqnn.finalize", f"--workdir={work}")
  assert final.returncode == 0 and "nothing to train" in final.stdout, final.stderr


def test_final_settings_that_cannot_train_are_refused_before_the_search(tmp_path):
  """Left for a later `finalize` (run_after_search=False) or not, the record would store
  them, and `finalize` has no flags to mend a schedule: refused at the start."""
  config = digits_config()
  config.final.run_after_search = False
  config.final.epochs = 0
  with pytest.raises(UserError, match="the final schedule .config.final.epochs and "
                     "learning_rate, or config.final.schedule. must have at least one epoch"):
    search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  assert not (tmp_path / "w").exists()


def test_a_stored_top_that_cannot_rank_names_where_it_came_from(finished, tmp_path):
  workdir, _ = finished
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("final", ".lock"))
  with pytest.raises(UserError, match=r"got 0 and 2 \(the search's final.top: give --top"):
    finalize.finalize(copy, ensemble=2, config_overrides={"final.top": 0})
  with pytest.raises(UserError, match=r"got 0 and 2$"):  # given: no more to say
    finalize.finalize(copy, top=0, ensemble=2)


def test_final_precision_is_compared_as_trained():
  """final.dtype as the precision a model trained in: "auto" is float32 on CPUs; the same
  setting is the same model wherever it is read (auto finalized on a GPU, read on a CPU)."""
  config = digits_config()
  saved = json.loads(config.to_json())
  f32 = copy.deepcopy(config)
  f32.final.dtype = "float32"
  assert finalize.settings_differ(saved, config) == []
  assert finalize.settings_differ(saved, f32) == []
  assert finalize.settings_differ(saved, config, precision="bfloat16") == []
  assert finalize.settings_differ(saved, f32, precision="bfloat16") == [
      "final.dtype (it trained in bfloat16)"]

"""The final stage (SPEC section 1 and 4): retrain the top models longer, test, ensemble.

  python -m metaqnn.finalize --workdir=DIR [--top=10] [--ensemble=5]

The top N models of a search by reward (the validation accuracy, or the budget's soft
objective when one is set) are trained again from scratch with the data set's final
schedule (`config.final`) on the whole training set (train plus validation), each
checkpointed with Orbax and tested on the test split; the top M are ensembled by
averaging their predicted class probabilities. Results go to
`DIR/final/results.json` and a Markdown table like the paper's Table 3,
`DIR/final/results.md`. Resumable: finished models (checkpoint, test probabilities and
metadata present) are not trained again.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import os
import threading
import time
from typing import Callable, Optional

import ml_collections
import numpy as np

from metaqnn import budget as budget_lib
from metaqnn import files
from metaqnn import input_pipeline
from metaqnn import progress
from metaqnn import signals
from metaqnn import store as store_lib
from metaqnn.architecture import parse
from metaqnn.results import rank_key
from metaqnn.errors import UserError


def top_models(workdir: str, n: int) -> tuple[ml_collections.ConfigDict, list]:
  """The stored config and the top `n` distinct, successfully trained models."""
  with store_lib.open_existing(workdir) as store:
    config = store.config()
    records = [r for r in store.models() if not r.resampled and r.status == "ok"]
  if "final" not in config:  # made before the final stage had settings: the defaults
    from metaqnn import config_lib
    config.final = config_lib.base_config(config.dataset.name).final
  records = [r for r in records if within_budget(config, r)]
  records.sort(key=rank_key)
  return config, records[:n]


def schedule_progress(workdir: str, config) -> tuple[int, int]:
  """(unique models done, the schedule's total) of the search in `workdir`."""
  from metaqnn.agent import Schedule
  with store_lib.open_existing(workdir) as store:
    done = store.unique_count()
  return done, Schedule.parse(config.search.schedule).total


def within_budget(config, record) -> bool:
  """Whether a model is within the search's hard budget (the final stage respects it)."""
  from metaqnn import budget
  b = budget.Budget.from_config(config)
  if not b.hard:
    return True
  side, channels = int(config.dataset.image_size), int(config.dataset.channels)
  return b.over(*budget.cost(record.arch, (side, side, channels))) is None


def _workers(config) -> int:
  workers = int(config.final.get("num_workers", 0))
  if workers < 0:
    raise UserError(f"final.num_workers must be >= 1 (or 0 = auto), got {workers}")
  return workers


def check_config(config) -> None:
  """Refuses bad `config.final` values in one line (the search calls it at its start)."""
  _workers(config)
  if (config.final.get("run_after_search", False)  # main runs it after training only
      and str(config.get("evaluator", "train")) == "train"):
    top, ensemble = int(config.final.top), int(config.final.ensemble)
    if top < 1 or ensemble < 0:
      raise UserError(f"final.top must be >= 1 and final.ensemble >= 0, got {top} and "
                       f"{ensemble}; to skip the final stage, set "
                       "final.run_after_search=False")
  # Checked whatever the evaluator, and when the final stage is left for later: the record
  # stores them, and `finalize` (which also trains a synthetic search's top models) has
  # no flags to mend its schedule.
  from metaqnn import train  # pylint: disable=import-outside-toplevel
  train.check_settings(config, final=True)


# Config fields that do not change a final model (or a transfer run): where the data is
# found and the search's split; the search's own training settings, and those the final
# stage lays its own over (optimizer, momentum, augmentation, weight decay, precision);
# how the final stage runs; and its schedule's fields, compared as the rate per epoch.
_IRRELEVANT = {"dataset": {"name", "data_dir", "download", "val_size", "val_fraction",
                           "train_fraction"},
               "train": {"epochs", "learning_rate", "lr_decay", "lr_decay_every",
                         "max_seconds", "eval_batch_size", "max_restarts",
                         "restart_lr_factor", "restart_threshold", "optimizer", "momentum",
                         "augment", "weight_decay", "dtype"},
               "final": {"top", "ensemble", "num_workers", "run_after_search", "plots",
                         "schedule", "epochs", "learning_rate", "dtype"}}

# final.dtype is compared as the precision it trains in ("auto" is float32 on CPUs):
# `settings_differ`.

# How `settings_differ` names the final schedule (final.schedule, or final.epochs,
# final.learning_rate and the decay), compared as the rate of each epoch.
_RATES = "final schedule (the learning rate of each epoch)"


def _settings(config: dict) -> dict:
  """What a final model depends on, of a config (as JSON): the data, the training
  settings, the final stage's, the learning rate of each final epoch, the seed. (The
  data set's name is compared by the callers: a transfer run's as given or absolute.)"""
  from metaqnn import train
  out = {"seed": config.get("seed")}
  try:
    out[_RATES] = train.final_learning_rates(ml_collections.ConfigDict(config))
  except (AttributeError, KeyError):  # saved by a version without some of its fields
    pass
  for section, irrelevant in _IRRELEVANT.items():
    out[section] = {k: v for k, v in (config.get(section) or {}).items()
                    if k not in irrelevant}
  return out


def _shared(a: dict, b: dict) -> tuple[dict, dict]:
  """`a` and `b` with only the keys both have, at every depth: a model saved before a
  setting existed is not another model for lacking it."""
  out_a, out_b = {}, {}
  for k in set(a) & set(b):
    both_dicts = isinstance(a[k], dict) and isinstance(b[k], dict)
    out_a[k], out_b[k] = _shared(a[k], b[k]) if both_dicts else (a[k], b[k])
  return out_a, out_b


def settings_differ(saved: dict, config, precision: Optional[str] = None) -> list[str]:
  """The settings (dotted paths) in which a saved model's config (as JSON) and `config`
  would train a different final model; `precision`: the one the saved model trained in,
  where its meta.json says (else its final.dtype as this machine would resolve it)."""
  from metaqnn import train
  differs = store_lib.differences(*_shared(_settings(saved), _settings(json.loads(
      config.to_json()))))
  given = str(config.final.get("dtype", "auto"))
  if "final" in saved and str(saved["final"].get("dtype", "auto")) != given:
    # Another setting may name the same precision ("auto" is float32 on CPUs). (The same
    # setting passes: "auto" of a model finalized on a GPU, read again on a CPU.)
    was = precision or train.resolved_precision(ml_collections.ConfigDict(saved), "final")
    if was != train.resolved_precision(config, "final"):
      differs.append(f"final.dtype (it trained in {was})")
  return differs


def _damaged(path: str) -> str:
  return f"move {os.path.dirname(path)} aside and run again to train that model anew"


def _meta(path: str) -> dict:
  """A final model's meta.json; a damaged one is a one-line error that says how to retrain."""
  meta = files.read_json(path, _damaged(path))
  if not isinstance(meta, dict):
    raise UserError(f"{path} is not a final model's meta.json; {_damaged(path)}")
  return meta


def check_kept_before(workdir: str, config) -> None:
  """`_check_kept` for a search about to resume with `config` (its settings, the data's
  fields resolved), on the models it ranks top now: a run that its final stage would
  refuse is refused before it stores its settings (a resume that extends the search is
  checked again at its end, on its new top). Given to `search.run_search` as its
  `check_resume`: called only once the record is this search's, so another seed, data or
  training gets the search's own refusal and advice, not this one; and with the settings
  as the search resolved them (the data's image side, channels and classes read), as the
  final stage will read them from the record."""
  if "config" not in store_lib.stored_meta(workdir):  # killed before it stored one
    return
  _, best = top_models(workdir, int(config.final.top))
  _check_kept(os.path.join(workdir, store_lib.FINAL_DIR), best, config)


def _check_kept(root: str, best, config) -> None:
  """Refuses a final stage whose finished models were trained with other settings (a
  resume with another final.epochs, say): they would be kept as if they were these."""
  for rec in best:
    meta = os.path.join(model_dir(root, rec.arch), "meta.json")
    if not os.path.exists(meta):
      continue
    folder = os.path.dirname(meta)
    missing = [f for f in ("checkpoint", "test_probs.npy")
               if not os.path.exists(os.path.join(folder, f))]
    if missing:  # (removed by hand: meta.json is written last) found before any training
      raise UserError(f"the final model {folder} is incomplete (no {' or '.join(missing)}); "
                      f"{_damaged(meta)}")
    saved = _meta(meta)
    differs = settings_differ(saved.get("config") or {}, config, saved.get("precision"))
    if differs:
      raise UserError(f"{root} holds final models trained with other settings (differs "
                      f"in: {', '.join(differs)}); to train these, move {root} aside (it "
                      "is kept as it is) and run again")


def num_workers(config) -> int:
  """`config.final.num_workers`, 0 (auto) resolved: two models at a time on CPUs, where
  one model's training keeps about one core busy (BENCHMARKS.md), else one."""
  workers = _workers(config)
  if workers:
    return workers
  import jax
  return 2 if jax.default_backend() == "cpu" and (os.cpu_count() or 1) > 1 else 1


def model_dir(root: str, arch: str) -> str:
  """A final model's folder, named by its architecture alone: a model keeps it when a
  longer search changes the ranking, so it is never retrained."""
  return os.path.join(root, hashlib.sha256(arch.encode()).hexdigest()[:12])


def _load_checked(workdir: str, config, given=None):
  """The final split of the data the search ranked its models on: refused, as a resume
  is, when the data changed since (a record of the train evaluator keeps a digest of its
  search split, read here from the same load). `given`: the search's split, where the
  search was given it in memory; a search given its data so is refused without it."""
  with store_lib.open_existing(workdir) as store:
    meta = store.meta()
    if given is not None:
      input_pipeline.check(given)
      search_split, final = given, input_pipeline.final_split(given)
    elif store_lib.DATA_IN_MEMORY in meta:
      raise UserError(f"{workdir}'s search was given its data in memory (run_search("
                      "dataset=...)), which config.dataset does not load; give the same data "
                      "from Python: finalize.finalize(workdir, dataset=...)")
    elif "data" not in meta:  # the synthetic evaluator, or an older record
      return input_pipeline.load(config, final=True)
    else:
      search_split, final = input_pipeline.load_both(config)
    if "data" in meta:
      name = config.dataset.name if given is None else "the data set given"
      store.check_data(input_pipeline.digest(search_split), name, harm=(
          "The final stage would retrain the top models on other data than they were "
          "ranked on", "Restore the data, or start a new search on the new data"))
    return final


def finalize(workdir: str, top: Optional[int] = None, ensemble: Optional[int] = None,
             config_overrides: Optional[dict] = None, data_checked: bool = False,
             dataset: Optional[input_pipeline.Dataset] = None) -> dict:
  """Runs (or resumes) the final stage of a finished search; returns results.json's
  content. `data_checked`: the caller (the search just run) has checked the data.
  `dataset`: the `input_pipeline.Dataset` the search was given in memory
  (`run_search(dataset=...)`), checked against its record; its train and validation
  splits are trained on together and its test split tests.
  Holds the work directory's lock: never beside its search or another final stage."""
  store_lib.open_existing(workdir).close()  # a work directory that holds a search
  release, running = store_lib.lock(workdir), []
  try:
    return _finalize(os.path.abspath(workdir), top, ensemble, config_overrides,
                     data_checked, dataset, running)
  finally:
    if running:  # models stopped mid-epoch still finishing (in a notebook): held till then
      free = signals.release_once(release)  # (a command exiting at once frees it then)
      threading.Thread(target=lambda: (running[0].shutdown(wait=True), free()),
                       daemon=True).start()
    else:
      release()


def _finalize(workdir: str, top: Optional[int], ensemble: Optional[int],
              config_overrides: Optional[dict], data_checked: bool, given,
              running: list) -> dict:
  from metaqnn import checkpoints, train  # JAX only when needed
  config, _ = top_models(workdir, 0)
  if config_overrides:
    config.update_from_flattened_dict(config_overrides)
  top, ensemble = _top_and_ensemble(config, top, ensemble)
  _, best = top_models(workdir, top)
  if not best:
    raise store_lib.WorkdirError(f"{workdir} holds no successfully trained model yet")
  root = os.path.join(workdir, store_lib.FINAL_DIR)
  _check_kept(root, best, config)
  n = len(train.final_learning_rates(config))
  epochs = f"{n} epoch{'s' * (n != 1)}"
  models = (f"the top model of {workdir}, {epochs}" if len(best) == 1
            else f"the top {len(best)} models of {workdir}, {epochs} each")
  done, total = schedule_progress(workdir, config)
  if done < total:  # a search stopped before its end: what it has ranked so far
    models += f" (its search is not finished: {done} of {total} unique models)"
  print(f"final stage: {models}; loading the data...", flush=True)
  dataset = (input_pipeline.load(config, final=True) if data_checked and given is None
             else _load_checked(workdir, config, given))
  os.makedirs(root, exist_ok=True)
  trainer = train.FinalTrainer(config, dataset)
  data_digest = input_pipeline.digest(dataset)  # kept: a later evaluation checks its data
  todo = [(rank, rec) for rank, rec in enumerate(best, 1)
          if not os.path.exists(os.path.join(model_dir(root, rec.arch), "meta.json"))]
  lock = threading.Lock()  # one model's files written at a time

  def say(line: str) -> None:  # one write: lines of models trained at once stay whole
    print(line + "\n", end="", flush=True)

  _announce(say, len(best), len(todo), top, ensemble)

  def train_one(rank: int, rec, after: Optional[str] = None) -> None:
    say(f"final {rank}/{len(best)}: training {rec.arch}...")
    if after is not None:  # compiles while this one trains
      trainer.prepare(after)
    start = time.perf_counter()
    params, history = trainer.fit(rec.arch, on_epoch=progress.epoch_lines(
        say, f"final {rank}/{len(best)}", len(trainer.lrs)))
    p = trainer.predict(rec.arch, params, dataset.test_images)
    accuracy = float(np.mean(p.argmax(-1) == dataset.test_labels))
    path = model_dir(root, rec.arch)
    with lock:
      os.makedirs(path, exist_ok=True)
      checkpoints.save(os.path.join(path, "checkpoint"), params)
      np.save(os.path.join(path, "test_probs.npy"), p.astype(np.float32))
      files.write_json(os.path.join(path, "meta.json"), {
          "arch": rec.arch, "params": trainer.count_params(rec.arch),
          "diverged": train.diverged(history),
          # The validation accuracy, not an objective's reward (a user's evaluate may
          # give only the reward).
          "val_accuracy": (rec.accuracy if rec.best_val_accuracy is None
                           else rec.best_val_accuracy),
          "test_accuracy": accuracy, "search_iteration": rec.iteration,
          "history": history, "seconds": time.perf_counter() - start,
          "dataset": config.dataset.name,
          "input_shape": list(dataset.test_images.shape[1:]),
          "precision": train.resolved_precision(config, "final"),
          **checkpoints.input_metadata(config, dataset, names=given is None),
          "data": data_digest,
          "config": json.loads(config.to_json())}, indent=1)  # written last: marks it done
    say(f"final {rank}/{len(best)}: test accuracy {accuracy:.4f} {rec.arch}")

  workers = min(num_workers(config), len(todo))
  with signals.as_interrupts():  # a dropped Ctrl-C or SIGTERM still stops it
    if workers <= 1:
      for i, (rank, rec) in enumerate(todo):
        train_one(rank, rec, todo[i + 1][1].arch if i + 1 < len(todo) else None)
    else:  # models train independently: the same results as one after another
      _in_threads(train_one, todo, workers, running)
  # "evaluator": what ranked them: validation accuracies ("train"), made-up scores
  # ("synthetic": a dry run) or a user's evaluate ("function"), as recorded.
  results = {"dataset": config.dataset.name, **_collect(root, best, dataset, ensemble),
             "evaluator": store_lib.stored_fingerprint(workdir).get("evaluator", "train")}
  files.write_json(os.path.join(root, "results.json"), results, indent=1)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(results_table(results))
  return results


def _top_and_ensemble(config, top: Optional[int], ensemble: Optional[int]) -> tuple[int, int]:
  """How many models to retrain and to ensemble: the arguments, else the record's
  `final.top` and `final.ensemble`; a bad value is named where it came from."""
  stored = {"top": top is None, "ensemble": ensemble is None}  # not given: the record's
  top = int(config.final.top if top is None else top)
  ensemble = int(config.final.ensemble if ensemble is None else ensemble)
  if top < 1 or ensemble < 0:
    bad = [k for k, ok in (("top", top >= 1), ("ensemble", ensemble >= 0))
           if not ok and stored[k]]
    raise UserError(f"--top must be >= 1 and --ensemble >= 0, got {top} and {ensemble}" + (
        f" (the search's final.{' and final.'.join(bad)}: give "
        f"{' and '.join('--' + k for k in bad)})" if bad else ""))
  return top, ensemble


def _announce(say: Callable[[str], None], ranked: int, todo: int, top: int,
              ensemble: int) -> None:
  """Says which of the `ranked` final models an earlier run kept, and when the ensemble
  asked for is larger than what there is."""
  if not todo:
    which = "the final model was" if ranked == 1 else f"all {ranked} final models were"
    say(f"{which} trained by an earlier run; nothing to train")
  elif todo < ranked:
    kept = ranked - todo
    say(f"{kept} of the {ranked} final models {'was' if kept == 1 else 'were'} trained by "
        f"an earlier run and {'is' if kept == 1 else 'are'} kept; training the other "
        f"{todo}")
  if ensemble > ranked:
    models = f"{ranked} final model{'s' * (ranked != 1)}"
    fewer = (f"the top {top} (final.top, or --top)" if ranked == top else
             f"the {ranked} model{'s' * (ranked != 1)} of the search that trained fully")
    say(f"the ensemble takes all {models}: {ensemble} were asked (final.ensemble, or "
        f"finalize's --ensemble), more than {fewer}")


def _collect(root: str, best: list, dataset, ensemble: int) -> dict:
  """The final models of `best` as their folders under `root` hold them (each checked),
  and the ensemble of the top `ensemble` that did not diverge, tested."""
  models, probs = [], []
  for rank, rec in enumerate(best, 1):
    path = model_dir(root, rec.arch)
    meta_path = os.path.join(path, "meta.json")
    meta = _meta(meta_path)
    try:  # a model kept from an earlier run, damaged since: named, not a traceback
      kept = {k: meta[k] for k in ("arch", "params", "val_accuracy", "test_accuracy",
                                   "diverged")}
      p = np.load(os.path.join(path, "test_probs.npy"))
      # (a model whose training diverged has NaNs: it stays out of the ensemble)
      if p.shape != (len(dataset.test_labels), parse(rec.arch).num_classes) or not (
          kept["diverged"] or np.all(np.isfinite(p))):
        raise ValueError(f"test_probs.npy holds {p.dtype} {list(p.shape)}, not finite "
                         f"probabilities of the {len(dataset.test_labels)} test images")
      probs.append(p)
      if not os.path.isdir(os.path.join(path, "checkpoint")):
        raise FileNotFoundError("no checkpoint")
    except (KeyError, OSError, ValueError) as e:
      raise UserError(f"the final model {path} is incomplete or damaged "
                      f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); "
                      f"{_damaged(meta_path)}") from None
    # (val_accuracy is the search's: the candidate's, before it was retrained; the
    # reward is what ranked it, an objective's where one was set)
    models.append(kept | {"flops": budget_lib.cost(rec.arch, dataset.test_images.shape[1:])[1],
                          "checkpoint": os.path.join(path, "checkpoint"), "rank": rank,
                          "search_reward": rec.accuracy})
  # The ensemble: the top M models whose final training did not diverge.
  members = [i for i, m in enumerate(models) if not m["diverged"]][:ensemble]
  ens = None
  if members:
    avg = np.mean([probs[i] for i in members], axis=0)
    ens = {"size": len(members), "members": [models[i]["arch"] for i in members],
           "test_accuracy": float(np.mean(avg.argmax(-1) == dataset.test_labels))}
  return {"models": models, "ensemble": ens, "test_examples": int(len(dataset.test_labels))}


def _in_threads(train_one: Callable, todo: list, workers: int, running_after: list) -> None:
  """`train_one(*job)` for every job, `workers` at a time. A model starts only when one
  has finished well: after a failure or a stop none starts, and those running stop after
  their epoch in progress (`signals.Cancelled`), so that the exit does not wait for them;
  their pool is then put in `running_after`, for whoever must wait for them."""
  queue, running = iter(todo), set()
  pool, cancel = concurrent.futures.ThreadPoolExecutor(workers), threading.Event()

  def job(*args) -> None:
    with signals.cancelled_when(cancel):
      train_one(*args)

  try:
    while True:
      signals.check()  # a dropped Ctrl-C or SIGTERM (the workers do not check)
      running |= {pool.submit(job, *args)
                  for args in itertools.islice(queue, workers - len(running))}
      if not running:
        break
      done, running = concurrent.futures.wait(
          running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        future.result()
  finally:
    cancel.set()
    pool.shutdown(wait=False)
    if any(not f.done() for f in running):
      running_after.append(pool)


def _count(n: int) -> str:
  """A count of parameters or FLOPs as the paper's tables give it (1.23M; 4.56G), or in
  full below a million."""
  if n >= 1_000_000_000:
    return f"{n / 1e9:.2f}G"
  return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n:,}"


def results_table(results: dict) -> str:
  """A Markdown table in the spirit of the paper's Table 3 (test error, %)."""
  scored = {"synthetic": "synthetic score", "function": "search score"}.get(
      results.get("evaluator"))  # ranked by scores that are no validation accuracies
  # Ranked by a budget objective's rewards: they are shown (else the order looks wrong).
  rewarded = not scored and any(
      abs(m.get("search_reward", m["val_accuracy"]) - m["val_accuracy"]) > 1e-9
      for m in results["models"])
  lines = [f"# Final models: {results['dataset']}", "",
           "| rank | model architecture | params | FLOPs | "
           + ("search reward | " if rewarded else "")
           + f"{scored or 'search val. error (%)'} | test error (%) |",
           "|---|---|---|---|---|---|" + "---|" * rewarded]
  for m in results["models"]:
    test = "diverged" if m["diverged"] else f"{100 * (1 - m['test_accuracy']):.2f}"
    flops = "-" if m.get("flops") is None else _count(m["flops"])  # (older results: none)
    val = f"{m['val_accuracy']:.4f}" if scored else f"{100 * (1 - m['val_accuracy']):.2f}"
    reward = f"{m['search_reward']:.4f} | " if rewarded else ""
    lines.append(f"| {m['rank']} | `{m['arch']}` | {_count(m['params'])} | {flops} | "
                 f"{reward}{val} | {test} |")
  if not scored:
    lines += ["", "Search val.: the validation accuracy the model reached in the search, "
              "before it was retrained; test: the retrained model's."]
  e = results["ensemble"]
  if e:
    lines += ["", f"Ensemble of the top {e['size']} (mean of predicted probabilities): "
              f"test error **{100 * (1 - e['test_accuracy']):.2f}%** on "
              f"{results['test_examples']} test examples."]
  return "\n".join(lines) + "\n"


def main(argv):
  from absl import flags
  from metaqnn import cli
  f = flags.FLAGS
  if len(argv) > 1 or not f.workdir:
    raise cli.UserError("usage: python -m metaqnn.finalize --workdir=DIR [--top=10] "
                        "[--ensemble=5]")
  cli.handle_stops()
  try:
    results = finalize(f.workdir, f.top, f.ensemble)
  except KeyboardInterrupt:
    cli.stop("interrupted; finished final models are kept. Run the same command to resume.")
  print(results_table(results))
  print(f"results: {os.path.join(f.workdir, store_lib.FINAL_DIR, 'results.json')}")


if __name__ == "__main__":
  from absl import flags
  from metaqnn import cli
  flags.DEFINE_string("workdir", None, "Work directory of a finished search.")
  flags.DEFINE_integer("top", None, "Models to retrain (default: config.final.top).")
  flags.DEFINE_integer("ensemble", None, "Top models to ensemble (default: config.final.ensemble).")
  cli.run(main)

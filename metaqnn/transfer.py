"""Transfer an architecture to another data set (paper Table 5): from scratch or fine-tuned.

  python -m metaqnn.transfer --config=configs/cifar100.py --from_workdir=RUNS/cifar10 --workdir=OUT
  python -m metaqnn.transfer --config=configs/cifar100.py --arch="[C(128,3,1), ..., SM(10)]" \\
      --init_checkpoint=RUNS/cifar10/final/<hash>/checkpoint --workdir=OUT

The architecture (given, or the best of a search's work directory) gets the target data
set's number of classes, is trained with the target config's final schedule, and is
tested on the target's test split. With `--init_checkpoint`, every pretrained tensor whose
shape still fits starts from the checkpoint (the classifier is re-initialised when the
class count changes). Writes `OUT/checkpoint`, `OUT/meta.json` and prints one JSON line
on stdout; progress goes to stderr.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Optional

import ml_collections

from metaqnn import architecture as arch_lib
from metaqnn import files
from metaqnn import store as store_lib
from metaqnn.architecture import GAP, Architecture, Softmax
from metaqnn.errors import UserError


def _say(line: str) -> None:
  """Progress, on stderr: stdout holds only the result's JSON line."""
  print(line, file=sys.stderr, flush=True)


def with_classes(arch: Architecture, k: int) -> Architecture:
  """The same network with a k-way classifier (GAP(k) and SM(k))."""
  layers = [GAP(k) if isinstance(l, GAP) else Softmax(k) if isinstance(l, Softmax) else l
            for l in arch.layers]
  return Architecture(tuple(layers))


def _normal(arch: Optional[str]) -> Optional[str]:
  """`arch` as the paper's notation prints it (runs recorded it as given), if it parses."""
  try:
    return str(arch_lib.parse(arch))
  except (arch_lib.ArchitectureError, TypeError):
    return arch


def best_of(workdir: str) -> str:
  """The best model of the search in `workdir`; said on stderr when that search is not
  finished, or ranked its models by scores other than the trainer's accuracies."""
  from metaqnn import finalize
  config, best = finalize.top_models(workdir, 1)
  if not best:
    raise UserError(f"{workdir} holds no successfully trained model")
  done, total = finalize.schedule_progress(workdir, config)
  if done < total:
    _say(f"transfer: the search in {workdir} is not finished ({done} of {total} unique "
         "models): its best so far is taken")
  evaluator = store_lib.stored_fingerprint(workdir).get("evaluator", "train")
  if evaluator != "train":
    _say(f"transfer: the search in {workdir} ranked its models by "
         + ("the synthetic evaluator's made-up scores, not by trained accuracies"
            if evaluator == "synthetic" else "the scores of its own evaluate function"))
  return best[0].arch


def transfer(config: ml_collections.ConfigDict, arch: str, workdir: str,
             init_checkpoint: Optional[str] = None) -> dict:
  """Trains `arch` on `config`'s data set with its final schedule; returns the metrics.
  A run into a work directory that holds it finished returns its metrics again."""
  from metaqnn import checkpoints, input_pipeline
  # Paths are recorded absolute, as a search records them; runs recorded before that
  # hold them as they were typed, which matches too.
  typed = {"dataset": config.dataset.name, "init_checkpoint": init_checkpoint}
  config = copy.deepcopy(config)
  input_pipeline.absolute(config)
  # the model's folder or its checkpoint, as predict and inspect take them: recorded as one
  init_checkpoint = (os.path.abspath(checkpoints.checkpoint_dir(init_checkpoint))
                     if init_checkpoint else None)
  request = {"source_arch": str(arch_lib.parse(arch)), "dataset": config.dataset.name,
             "init_checkpoint": init_checkpoint}
  meta_path = os.path.join(workdir, "meta.json")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"{workdir} is a file, not a directory")
  if os.path.exists(meta_path):  # finished (meta.json is written last): only read
    return _finished(meta_path, workdir, config, request, typed)
  _check_empty(workdir)  # before its lock file is made in it (and again once locked)
  inside = input_pipeline.folder_holding(config, workdir)
  if inside:  # its checkpoint/ would be read as a class of the data
    raise UserError(f"{workdir} lies inside the data folder {inside}; choose an output "
                    "directory outside the data")
  created = store_lib.folders_to_make(workdir)  # removed again if the run is refused
  release = None
  try:
    os.makedirs(workdir, exist_ok=True)  # a path that cannot be made fails before training
    release = store_lib.lock(workdir, "a transfer into")  # one run at a time
    if os.path.exists(meta_path):  # finished by another run since
      return _finished(meta_path, workdir, config, request, typed)
    _check_empty(workdir)
    meta = _run(config, arch, workdir, init_checkpoint, request)
  except BaseException:
    try:
      if release is not None:
        release()
    finally:
      _remove_empty(created)  # a refused or stopped run leaves nothing behind
    raise
  release()
  return meta


def _check_empty(workdir: str) -> None:
  """Refuses a directory that holds anything but an unfinished run's (its checkpoint, or
  the lock file of one killed); one that holds a finished run (meta.json) is checked
  against this run instead."""
  if (os.path.isdir(workdir) and not os.path.exists(os.path.join(workdir, "meta.json"))
      and set(os.listdir(workdir)) - {"checkpoint", store_lib.LOCK_FILE}):
    raise UserError(f"{workdir} is not empty; use a new directory for a transfer run")


def _remove_empty(folders: list[str]) -> None:
  for folder in folders:
    if os.path.isdir(folder) and not os.listdir(folder):
      os.rmdir(folder)


def _finished(meta_path: str, workdir: str, config, request: dict, typed: dict) -> dict:
  """The metrics of the run finished in `workdir`, if it is this one (and on this data)."""
  from metaqnn import finalize, input_pipeline
  meta = files.read_json(meta_path, f"move {workdir} aside, or use a new --workdir")
  recorded = {k: meta.get(k) for k in request} | {
      "source_arch": _normal(meta.get("source_arch"))}
  differs = [k for k in request if recorded[k] not in (request[k], typed.get(k, ""))]
  differs += finalize.settings_differ(meta.get("config") or {}, config, meta.get("precision"))
  if differs:
    raise UserError(f"{workdir} holds another transfer run ({meta.get('arch')} on "
                    f"{meta.get('dataset')}; differs in: {', '.join(differs)}); use a "
                    "new --workdir")
  if "data" in meta:  # (runs recorded before transfer kept a digest have none)
    _say(f"transfer: {workdir} holds this run, finished; checking that "
         f"{config.dataset.name} is the data it trained on...")
    if input_pipeline.digest(input_pipeline.load(config, final=True)) != meta["data"]:
      raise UserError(f"{workdir} holds this transfer run on other data: "
                      f"{config.dataset.name} changed since; restore it, or use a new "
                      "--workdir")
  return meta  # done before: nothing is trained twice


def _run(config, arch: str, workdir: str, init_checkpoint: Optional[str],
         request: dict) -> dict:
  """Trains and tests the transferred network; writes its checkpoint, then meta.json."""
  from metaqnn import checkpoints, input_pipeline, models, progress, train
  meta_path = os.path.join(workdir, "meta.json")
  init = checkpoints.restore(init_checkpoint) if init_checkpoint else None
  n = len(train.final_learning_rates(config))
  _say(f"transfer: {request['source_arch']} onto {config.dataset.name}, {n} "
       f"epoch{'s' * (n != 1)}{' from ' + init_checkpoint if init_checkpoint else ''}; "
       "loading the data...")
  dataset = input_pipeline.load(config, final=True)
  # The data's own classes (configs/custom.py leaves num_classes to it).
  target = with_classes(arch_lib.parse(arch), dataset.num_classes)
  models.layer_summary(target, dataset.test_images.shape[1:])  # fits these images?
  if init is not None:
    shapes = models.param_shapes(models.CNN(target), dataset.test_images.shape[1:])
    fit, total = train.pretrained_fit(shapes, init)
    if not fit:
      raise UserError(f"none of the {init_checkpoint} tensors fits {target} on these "
                      "images; give a checkpoint of this architecture, or train from "
                      "scratch without --init_checkpoint")
    _say(f"fine-tuning: {fit} of {total} weight tensors start from the checkpoint"
         + (", the others fresh" if fit < total else ""))
  trainer = train.FinalTrainer(config, dataset)
  start = time.perf_counter()
  params, history = trainer.fit(target, init_params=init, on_epoch=progress.epoch_lines(
      _say, "transfer", n))
  probs = trainer.predict(target, params, dataset.test_images)
  checkpoints.save(os.path.join(workdir, "checkpoint"), params)
  meta = dict(request, arch=str(target))
  meta.update(params=trainer.count_params(target),
              diverged=train.diverged(history),
              test_accuracy=float((probs.argmax(-1) == dataset.test_labels).mean()),
              history=history, seconds=time.perf_counter() - start,
              input_shape=list(dataset.test_images.shape[1:]),
              precision=train.resolved_precision(config, "final"),
              **checkpoints.input_metadata(config, dataset),
              data=input_pipeline.digest(dataset),
              config=json.loads(config.to_json()))
  files.write_json(meta_path, meta, indent=1)  # written last: marks the run done
  return meta


def main(argv):
  from absl import flags
  from metaqnn import cli
  f = flags.FLAGS
  if len(argv) > 1 or f.config is None or not f.workdir or bool(f.arch) == bool(f.from_workdir):
    raise cli.UserError("usage: python -m metaqnn.transfer --config=configs/<target>.py "
                        "(--arch=ARCH | --from_workdir=DIR) --workdir=OUT "
                        "[--init_checkpoint=PATH]")
  cli.handle_stops()
  arch = f.arch or best_of(f.from_workdir)
  try:
    meta = transfer(f.config, arch, f.workdir, f.init_checkpoint)
  except KeyboardInterrupt:
    if os.path.exists(os.path.join(f.workdir, "meta.json")):  # checking a finished run
      cli.stop("interrupted; the finished transfer run is kept as it was.")
    cli.stop("interrupted; the transfer run did not finish and keeps nothing. Run the "
             "same command to start it again.")
  print(json.dumps({k: meta[k] for k in ("arch", "dataset", "params", "test_accuracy",
                                         "init_checkpoint")}))


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags
  from metaqnn import cli
  config_flags.DEFINE_config_file("config", None, "Target data set's config file.")
  flags.DEFINE_string("arch", None, "Architecture in the paper's notation.")
  flags.DEFINE_string("from_workdir", None, "Take the best model of this search instead.")
  flags.DEFINE_string("init_checkpoint", None, "Fine-tune from this checkpoint.")
  flags.DEFINE_string("workdir", None, "Output directory: new, or this same run's (reported "
                      "if finished, else started again).")
  cli.run(main)

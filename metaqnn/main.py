"""Runs (or resumes) a MetaQNN search.

  python -m metaqnn.main --config=configs/digits.py --workdir=/tmp/metaqnn_digits

Any config field can be overridden, e.g. `--config.seed=1`,
`--config.search.schedule=1.0:20,0.5:10,0.1:10`, `--config.evaluator=synthetic`,
`--config.train.epochs=5`. Running the same command again resumes the search.
"""

from __future__ import annotations

import os
import shlex

from absl import flags
from ml_collections import config_flags

from metaqnn import cli
from metaqnn import finalize
from metaqnn import search
from metaqnn import signals
from metaqnn import store

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Work directory: the record, the agent, TensorBoard logs, plots, final "
    "models.")


def _announce(config, workdir: str):
  """The first line, once the search is accepted and before its first model is prepared
  (a built-in data set loaded, the model compiled and trained): what runs where."""
  from metaqnn import agent

  def say(new: bool, done: int) -> None:
    total = agent.Schedule.parse(config.search.schedule).total
    models = f"{total} unique models" if new else f"{done} of {total} unique models done"
    print(f"{'starting' if new else 'resuming'} a {config.dataset.name} search in "
          f"{workdir}: {models}; preparing the {'first' if new else 'next'} one...",
          flush=True)

  return say


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise cli.UserError("usage: python -m metaqnn.main --config=configs/<name>.py "
                        "--workdir=DIR [--config.x.y=value ...]")
  cli.handle_stops()  # SIGTERM stops as cleanly as Ctrl-C, the final stage included
  config, workdir = _CONFIG.value, _WORKDIR.value
  final_stage = config.final.run_after_search and config.evaluator == "train"
  # On a resume, before the run stores its settings: refused, it changes nothing.
  check_final = (lambda settings: finalize.check_kept_before(workdir, settings)) \
      if final_stage else None
  try:
    result = search.run_search(config, workdir, on_start=_announce(config, workdir),
                               check_resume=check_final)
  except KeyboardInterrupt:
    if not os.path.exists(os.path.join(workdir, store.DB_FILE)):  # still loading the data
      cli.stop("interrupted before the search began. Run the same command to start it.")
    cli.stop("interrupted; the record is saved. Run the same command to resume.")
  best = ("no model trained successfully" if result.best_accuracy is None
          else f"best {result.best_accuracy:.4f} {result.best_arch}")
  if result.already_finished:
    after = [what for what, on in (("the plots are drawn again", config.final.plots), (
        "final models that are missing trained now",
        final_stage and result.best_arch is not None)) if on]
    print(f"this search was already finished: {result.unique_models} unique models, "
          f"{result.iterations} iterations; {best}. Nothing to train"
          + (f"; {', and '.join(after)}" if after else ""))
  else:
    status = "finished" if result.finished else "stopped"
    print(f"search {status}: {result.unique_models} unique models, {result.iterations} "
          f"iterations (re-samples included); {best}")
  if result.finished and config.final.plots:
    from metaqnn import plots
    try:
      with signals.as_interrupts():  # a stop that Python drops is raised after them
        print("plots: " + ", ".join(plots.write_all([workdir])))
    except KeyboardInterrupt:
      cli.stop("interrupted while drawing the plots; the search is finished and saved. Run "
               "the same command to draw them"
               + (" and run the final stage" if final_stage else ""))
  if result.finished and final_stage and result.best_arch is None:
    print("final stage skipped: no model of the search trained successfully (inspect lists "
          "the failures)")
  elif result.finished and final_stage:
    try:  # the final stage: top models retrained, tested, ensembled
      results = finalize.finalize(workdir, data_checked=True)  # by the search just run
    except KeyboardInterrupt:
      cli.stop("interrupted; finished final models are kept. Run the same command (or "
            f"{cli.python()} -m metaqnn.finalize --workdir={shlex.quote(workdir)}) to resume.")
    print(finalize.results_table(results))
    kept = [m for m in results.get("models", []) if not m.get("diverged")]
    if kept:  # the top one that trained (a diverged one is left out of the ensemble too)
      print(f"classify images with the top final model: {cli.python()} -m metaqnn.predict "
            f"--model={shlex.quote(os.path.dirname(kept[0]['checkpoint']))} --images=PATH")
  print(f"inspect it with: {cli.python()} -m metaqnn.inspect "
        f"--workdir={shlex.quote(workdir)}")


if __name__ == "__main__":
  cli.run(main)

"""Summarises a search's work directory.

  python -m metaqnn.inspect --workdir=DIR          # readable summary
  python -m metaqnn.inspect --workdir=DIR --json   # one JSON object, every model
  python -m metaqnn.inspect --checkpoint=DIR/final/<hash> [--split=test|val|train]
"""

from __future__ import annotations

import collections
import json
import os
from typing import Optional

import numpy as np
from absl import flags

from metaqnn import budget as budget_lib
from metaqnn import cli
from metaqnn import files
from metaqnn import results
from metaqnn import store as store_lib
from metaqnn.agent import Schedule

def summarize(workdir: str, top: int = 10) -> dict:
  """Everything `inspect` shows, as one JSON-ready dict."""
  with store_lib.open_existing(workdir) as store:
    meta = store.meta()
    records = list(store.models())
    attempts = store.attempts()
    pending = {p.arch for p in store.pending()}
    running = store_lib.holder(workdir)  # a search (or final stage) running now
    greedy = _greedy(workdir, store, records) if "config" in meta else None
  config = (store_lib.meta_json(meta, "config", os.path.join(workdir, store_lib.DB_FILE))
            if "config" in meta else {})
  budget = budget_lib.Budget.from_config(config)
  schedule_text = config.get("search", {}).get("schedule")
  over = [r for r in records if r.status == results.OVER_BUDGET]  # re-samples included
  unique = [r for r in records if results.counts_toward_schedule(r)]
  by_eps = collections.defaultdict(list)  # every sample (what the agent chose)
  unique_by_eps = collections.Counter(r.epsilon for r in unique)
  for r in records:
    by_eps[r.epsilon].append(r.accuracy)
  schedule: Optional[dict] = None
  if schedule_text:
    sched = Schedule.parse(schedule_text)
    stage = sched.stage(len(unique))
    schedule = {"text": str(sched), "total": sched.total,
                "stage": None if stage is None else stage + 1,
                "stages": len(sched.stages), "finished": stage is None}
  # Fully trained models only: a stopped model's accuracy is a prediction, not a measure.
  ranked = sorted((r for r in unique if r.status == "ok"), key=results.rank_key)
  final = _final_results(workdir)
  return {
      "workdir": workdir,
      # {"pid", "since"} of the process running in it now, or None
      "running": running,
      "crashes": _crashes(records, attempts, pending, running and running["since"]),
      "final": final,
      "dataset": config.get("dataset", {}).get("name"),
      "unique_models": len(unique),
      "iterations": len(records),
      "resampled": sum(r.resampled for r in records),
      "over_budget": len(over),
      "over_budget_unique": sum(not r.resampled for r in over),
      "budget": budget.shaping(),
      "early_stop": _early_stop(config),
      "stopped": sum(not r.resampled and r.status == "stopped" for r in records),
      # "validation accuracy", or "reward" where some rewards are not (results.reward_kind).
      "reward_kind": results.reward_kind(budget.objective, (r.status for r in records)),
      "timeout": sum(not r.resampled and r.status == "timeout" for r in records),
      "schedule": schedule,
      "time": _time(unique),
      # Mean reward of the samples drawn at each epsilon, re-samples included.
      "mean_accuracy_by_epsilon": {f"{e:g}": {"mean": sum(v) / len(v), "samples": len(v),
                                              "unique": unique_by_eps[e]}
                                   for e, v in sorted(by_eps.items(), reverse=True)},
      # "accuracy" is the reward (under budget.objective: accuracy x a cost factor);
      # "best_val_accuracy" the validation accuracy it came from (as in "models").
      "top": [{"arch": r.arch, "accuracy": r.accuracy,
               "best_val_accuracy": r.best_val_accuracy,
               "iteration": r.iteration, "params": r.params, "flops": r.flops}
              for r in ranked[:top]],
      "greedy": greedy,
      "failures": [{"arch": r.arch, "status": r.status, "message": r.message,
                    "iteration": r.iteration} for r in unique
                   if r.status not in ("ok", "stopped")],
      # Every field of every record (learning curves included: one entry per attempt).
      "models": [r.to_json() for r in records],
  }


def _final_results(workdir: str) -> Optional[dict]:
  """DIR/final/results.json, or None before the final stage wrote one; a damaged one (edited
  by hand, or cut short) is one line that says how to write it again."""
  path = os.path.join(workdir, store_lib.FINAL_DIR, "results.json")
  if not os.path.exists(path):
    return None
  what = f"run python -m metaqnn.finalize --workdir={workdir} to write it again"
  final = files.read_json(path, what)
  number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  count = lambda v: v is None or type(v) is int
  model_ok = lambda m: (isinstance(m, dict) and type(m.get("rank")) is int
                        and isinstance(m.get("arch"), str)
                        and isinstance(m.get("checkpoint"), str)
                        and count(m.get("params")) and count(m.get("flops"))
                        and number(m.get("test_accuracy")) and number(m.get("val_accuracy")))
  ens = final.get("ensemble") if isinstance(final, dict) else None
  if not (isinstance(final, dict) and isinstance(final.get("models"), list)
          and all(map(model_ok, final["models"]))
          and (ens is None or isinstance(ens, dict) and type(ens.get("size")) is int
               and number(ens.get("test_accuracy")))):
    raise cli.UserError(f"{path} is not a final stage's results.json; {what}")
  from metaqnn import finalize  # pylint: disable=import-outside-toplevel
  for m in final["models"]:  # where they are now: the work directory may have moved
    m["checkpoint"] = os.path.join(finalize.model_dir(os.path.dirname(path), m["arch"]),
                                   "checkpoint")
  return final


def _greedy(workdir: str, store, records) -> dict:
  """What the agent has learned, in one architecture: its walk now at epsilon 0 (ties,
  such as untried actions at q_init, broken by a copy of its random state), the Q-value
  of each step, and the record of that architecture if it was sampled."""
  from metaqnn import search
  try:
    agent = search.agent_of(workdir, store)
  except store_lib.WorkdirError as e:  # a damaged record: inspect still shows the rest
    return {"error": str(e)}
  path = agent.fork().sample(0.0)
  arch = str(path.architecture)
  rec = next((r for r in records if r.arch == arch and not r.resampled), None)
  return {"arch": arch,
          "q_values": [float(agent.q[s, a]) for s, a in zip(path.states, path.actions)],
          "iteration": None if rec is None else rec.iteration,
          "accuracy": None if rec is None else rec.accuracy,
          "status": None if rec is None else rec.status}


def _crashes(records, attempts: list[dict], pending: set,
             running_since: Optional[float] = None) -> list[dict]:
  """Models whose evaluation crashed (recorded as crashed or lost, or still pending after
  a crash), each with its attempts: when each started and how it ended ("died": the
  process died during it, a crash or a kill -9; "running": the search running now, since
  `running_since`, has it in flight)."""
  by_arch: dict[str, list[dict]] = collections.defaultdict(list)
  for a in attempts:
    live = running_since is not None and a["started"] >= running_since
    by_arch[a["arch"]].append({"started": a["started"],
                               "ended": a["ended"] or ("running" if live else "died")})
  out = [{"arch": r.arch, "status": r.status, "iteration": r.iteration,
          "message": r.message, "attempts": by_arch.get(r.arch, [])}
         for r in records if not r.resampled and r.status in ("crashed", "lost")]
  for arch in sorted(pending):
    if any(a["ended"] in ("died", "lost") for a in by_arch.get(arch, [])):
      out.append({"arch": arch, "status": "pending", "iteration": None,
                  "message": "crashed before; evaluated again on resume",
                  "attempts": by_arch[arch]})
  return out


def _time(unique: list) -> dict:
  """Seconds spent in the evaluations of the unique models whose compile wait was
  measured (`Result.compile_seconds`: the train evaluator, since it was kept), and how
  much of it went to waiting for compiles."""
  timed = [r for r in unique if r.compile_seconds is not None]
  return {"models": len(timed), "seconds": float(sum(r.seconds for r in timed)),
          "compile_wait_seconds": float(sum(r.compile_seconds for r in timed))}


def _early_stop(config: dict) -> Optional[dict]:
  """The early stopping rule the search ran with (None: none, the paper's method)."""
  rule = dict(config.get("early_stop") or {})
  if rule.get("kind", "none") == "none":
    return None
  from metaqnn import early_stop
  rule["epochs"] = int(config["train"]["epochs"])  # a rule needs the train evaluator
  rule["stop_epoch"] = early_stop.stop_epoch(rule["epochs"], float(rule["tau"]))
  if rule["kind"] == "predictor":
    rule.setdefault("top", 1)  # (records made before it existed)
  else:
    rule.pop("top", None)  # the median rule has none
  return rule


def render(s: dict) -> str:
  """The readable form of `summarize`'s result."""
  return "\n".join(_header(s) + _top_table(s) + _agent_choice(s) + _final_models(s)
                   + _failures(s))


def _size(v: Optional[int]) -> str:
  return "?" if v is None else f"{v:,}"


def _header(s: dict) -> list[str]:
  """The work directory, schedule, budget, early stopping and time lines."""
  lines = [f"work directory: {s['workdir']}   data set: {s['dataset']}"]
  if s.get("running"):
    lines.append(f"running now: process {s['running']['pid']} (a search or its final "
                 "stage); what follows is the record so far")
  sched = s["schedule"]
  if sched:
    state = "finished" if sched["finished"] else f"stage {sched['stage']}/{sched['stages']}"
    lines.append(f"schedule: {s['unique_models']}/{sched['total']} unique models ({state}); "
                 f"{s['iterations']} iterations, {s['resampled']} re-samples")
  if s.get("budget") or s.get("over_budget"):
    limits = ", ".join(f"{k} {v:,}" if isinstance(v, int) else
                       f"{k} {v:,.0f}" if isinstance(v, float) and v.is_integer() else
                       f"{k} {v:,g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in s.get("budget", {}).items())
    lines.append(f"budget: {limits or 'none'}; {s['over_budget']} over-budget samples, "
                 f"{s['over_budget_unique']} distinct (status over_budget, never trained)")
  rule = s.get("early_stop")
  if rule:
    how = ""
    if rule["kind"] != "median":
      from metaqnn.early_stop import beating  # (JAX: only for a search that had a rule)
      bar = beating(int(rule["top"]))
      how = f", delta {rule['delta']}, reward {rule['reward']}" + (f", {bar}" if bar else "")
    lines.append(f"early stopping: {rule['kind']}, deciding after epoch {rule['stop_epoch']} "
                 f"of {rule['epochs']}{how}, once "
                 f"{rule['min_completed']} models are fully trained; {s['stopped']} stopped")
  t = s.get("time") or {}
  if t.get("seconds"):
    spent = (f"{t['seconds'] / 3600:.2f} h" if t["seconds"] >= 3600 else
             f"{t['seconds'] / 60:.1f} min" if t["seconds"] >= 60 else f"{t['seconds']:.0f} s")
    lines.append(f"time in candidates: {spent} ({t['models']} models), "
                 f"{100 * t['compile_wait_seconds'] / t['seconds']:.0f}% of it waiting for "
                 "compiles (on GPUs: README, \"On GPUs\")")
  return lines


def _top_table(s: dict) -> list[str]:
  """The mean reward per epsilon and the top fully trained models."""
  lines = []
  soft = bool((s.get("budget") or {}).get("objective"))  # a reward column beside accuracy
  if s["reward_kind"] == "reward":
    shaped = ["re-samples"] + [what for k, what in (("over_budget", "over-budget samples"),
                                                   ("stopped", "models stopped early"))
                               if s.get(k)]
    lines.append("\nmean reward per epsilon (what the agent received over all samples, "
                 f"{', '.join(shaped)} included):")
  else:
    lines.append("\nmean accuracy per epsilon (over all samples, re-samples included):")
  for eps, v in s["mean_accuracy_by_epsilon"].items():
    lines.append(f"  eps {eps:>4}  {v['mean']:.4f}  ({v['samples']} samples, "
                 f"{v['unique']} unique models)")
  left = [f"{s[k]} {what}" for k, what in (("stopped", "stopped early, their accuracy "
                                             "predicted or partial"),
                                            ("timeout", "stopped by train.max_seconds"))
          if s.get(k)]
  stopped = f" (not ranked: {'; '.join(left)})" if left else ""
  lines.append(f"\ntop {len(s['top'])} fully trained models{stopped}:")
  val = lambda m: "?" if m["best_val_accuracy"] is None else f"{m['best_val_accuracy']:.4f}"
  lines.append(f"      {'accuracy':>8}  " + (f"{'reward':>8}  " if soft else "")
               + f"{'params':>10}  {'FLOPs':>12}  sample     architecture")
  for i, m in enumerate(s["top"], 1):
    score = f"{val(m):>8}  {m['accuracy']:.4f}" if soft else f"{m['accuracy']:.4f}"
    lines.append(f"  {i:2d}. {score}  {_size(m['params']):>10}  "
                 f"{_size(m.get('flops')):>12}  #{m['iteration'] + 1:<8d} {m['arch']}")
  return lines


def _agent_choice(s: dict) -> list[str]:
  """The agent's greedy architecture now, with its Q-values."""
  g = s.get("greedy")
  if not g:
    return []
  if "error" in g:
    return [f"\nthe agent cannot be rebuilt from the record: {g['error']}"]
  # "reward" where its value is not its validation accuracy: an objective's, a prediction
  # (stopped), an over-budget sample's set reward
  shaped = bool((s.get("budget") or {}).get("objective")) or g["status"] in (
      "stopped", results.OVER_BUDGET)
  seen = ("never sampled" if g["iteration"] is None else
          f"sample #{g['iteration'] + 1}: " + ("reward " if shaped else "")
          + f"{g['accuracy']:.4f} ({g['status']})")
  return [f"\nthe agent's choice now (epsilon 0): {g['arch']}; {seen}",
          "  Q-values along it: " + " ".join(f"{q:.4f}" for q in g["q_values"])]


def _final_models(s: dict) -> list[str]:
  """The final stage's retrained models and ensemble, if any."""
  if not s.get("final"):
    return []
  lines = ["\nfinal models (retrained, test accuracy):"]
  for m in s["final"]["models"]:
    reward = m.get("search_reward", m["val_accuracy"])
    lines.append(f"  {m['rank']:2d}. test {m['test_accuracy']:.4f}  search val "
                 f"{m['val_accuracy']:.4f}"
                 + (f" (reward {reward:.4f})" if abs(reward - m["val_accuracy"]) > 1e-9
                    else "")
                 + f"  {_size(m['params']):>10} params  {_size(m.get('flops')):>12} FLOPs  "
                 f"{m['arch']}  {m['checkpoint']}")
  if s["final"].get("ensemble"):
    e = s["final"]["ensemble"]
    lines.append(f"  ensemble of {e['size']}: test {e['test_accuracy']:.4f}")
  return lines


def _failures(s: dict) -> list[str]:
  """Crashed and failed candidates."""
  lines = []
  if s.get("crashes"):
    lines.append(f"\ncrashed models: {len(s['crashes'])}")
    for c in s["crashes"]:
      ends = collections.Counter(a["ended"] for a in c["attempts"])
      tried = ", ".join(f"{n} {e}" for e, n in sorted(ends.items())) or "no attempts journaled"
      where = f"sample {c['iteration'] + 1}" if c["iteration"] is not None else "in flight"
      lines.append(f"  {where} {c['status']} ({len(c['attempts'])} attempts: {tried}): "
                   f"{c['message'][:120]}  {c['arch']}")
  lines.append(f"\nfailures: {len(s['failures'])}")
  for f in s["failures"][:20]:
    lines.append(f"  sample {f['iteration'] + 1} {f['status']}: {f['message'][:120]}  {f['arch']}")
  return lines


def checkpoint_summary(path: str, split: Optional[str] = None) -> dict:
  """Architecture, parameter table and stored metrics of a final model's checkpoint;
  with `split` ("test", "val", "train"), also its accuracy evaluated there now. `path` is
  the checkpoint or the final model's folder that holds it."""
  from metaqnn import checkpoints, models
  from metaqnn.architecture import parse
  path = checkpoints.checkpoint_dir(path)  # or the final model's folder itself
  meta, params = checkpoints.load(path)
  arch = parse(meta["arch"])
  shapes = {}
  for layer, leaves in params.items():
    for name, value in leaves.items():
      shapes[f"{layer}/{name}"] = list(value.shape)
  out = {"checkpoint": path, "arch": str(arch), "dataset": meta.get("dataset"),
         "params": int(sum(int(np.prod(s)) for s in shapes.values())),
         "parameters": shapes,
         "layers": [l.to_json() for l in models.layer_summary(arch, meta["input_shape"])],
         "metrics": {k: meta[k] for k in ("val_accuracy", "test_accuracy", "seconds")
                     if k in meta}}
  if split:
    import ml_collections
    from metaqnn import input_pipeline, train
    config = ml_collections.ConfigDict(meta["config"])
    # "val" is the search's validation split (the final model also trained on it); a
    # transfer run has none to carve, so the search split is made only when asked for.
    search_split, final = (input_pipeline.load_both(config) if split == "val"
                           else (None, input_pipeline.load(config, final=True)))
    if "data" in meta and input_pipeline.digest(final) != meta["data"]:  # (older: none)
      raise store_lib.WorkdirError(
          f"{config.dataset.name} changed since this model was trained and tested on it: "
          "its accuracy now would not be the model's on its data; restore the data")
    data = search_split if split == "val" else final
    images, labels = {"test": (data.test_images, data.test_labels),
                      "val": (data.val_images, data.val_labels),
                      "train": (data.train_images, data.train_labels)}[split]
    probs = train.FinalTrainer(config, data).predict(arch, params, images)
    out["evaluated"] = {"split": split, "examples": int(len(labels)),
                        "accuracy": float((probs.argmax(-1) == labels).mean()),
                        # a final model trained on train and val: not a held-out figure
                        "held_out": split == "test"}
  return out


def render_checkpoint(s: dict) -> str:
  lines = [f"checkpoint: {s['checkpoint']}", f"architecture: {s['arch']}",
           f"data set: {s['dataset']}   trainable parameters: {s['params']:,}", "",
           f"  {'layer':<10} {'output shape':<16} {'params':>10}  dropout"]
  for l in s["layers"]:
    lines.append(f"  {l['name']:<10} {str(tuple(l['output_shape'])):<16} {l['params']:>10,}"
                 f"  {l['dropout'] or ''}")
  lines.append("")
  lines += [f"{k}: {v:.4f}" for k, v in s["metrics"].items()]
  if "evaluated" in s:
    e = s["evaluated"]
    lines.append(f"evaluated now on {e['split']} ({e['examples']} examples): "
                 f"accuracy {e['accuracy']:.4f}" + ("" if e.get("held_out", True) else
                                                    " (trained on it: not held out)"))
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  f = flags.FLAGS
  if len(argv) > 1 or bool(f.workdir) == bool(f.checkpoint):
    raise cli.UserError("usage: python -m metaqnn.inspect (--workdir=DIR [--top=N] | "
                        "--checkpoint=PATH [--split=test]) [--json]")
  if f.workdir and f.split:
    raise cli.UserError("--split evaluates a final model: give it with --checkpoint=PATH, "
                        "not --workdir")
  if f.checkpoint and f["top"].present:
    raise cli.UserError("--top lists a search's top models: give it with --workdir=DIR")
  if f.top < 1:
    raise cli.UserError(f"--top must be >= 1, got {f.top}")
  if f.checkpoint:
    summary = checkpoint_summary(f.checkpoint, f.split)
    print(json.dumps(summary) if f.json else render_checkpoint(summary))
    return
  summary = summarize(f.workdir, f.top)
  print(json.dumps(summary) if f.json else render(summary))


if __name__ == "__main__":  # flags only for the command, so the library imports cleanly
  flags.DEFINE_string("workdir", None, "Work directory of a search.")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a summary.")
  flags.DEFINE_integer("top", 10, "Number of top models to list.")
  flags.DEFINE_string("checkpoint", None, "A final model's checkpoint directory.")
  flags.DEFINE_enum("split", None, ["test", "val", "train"],
                    "Evaluate the checkpoint on this split (val: the search's validation split).")
  cli.run(main)

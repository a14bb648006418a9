"""Early stopping: the predictor, the offline replay and command, and a live search."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import digits
from metaqnn import early_stop, evaluators, results, search
from metaqnn import store as store_lib
from metaqnn.architecture import parse
from metaqnn.results import Result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 8


def curve_of(arch, epochs=EPOCHS):
  """A deterministic learning curve whose end follows from its start: a saturating rise
  to a ceiling that depends on the architecture's string."""
  ceiling = 0.3 + 0.65 * (sum(map(ord, str(arch))) % 97) / 96
  rate = 0.5 + (len(str(arch)) % 5) / 10
  return [float(ceiling * (1 - np.exp(-rate * (e + 1)))) for e in range(epochs)]


def curve_evaluate(arch):
  acc = curve_of(arch)
  return Result(accuracy=max(acc), best_val_accuracy=max(acc), last_val_accuracy=acc[-1],
                epochs=len(acc),
                curves=[{"val_accuracy": acc, "train_loss": [1 - a for a in acc]}])


def config(schedule="1.0:60,0.1:10"):
  c = digits.get_config()
  c.search.schedule = schedule
  c.search.replay_samples = 10
  c.train.epochs = EPOCHS
  return c


@pytest.fixture(scope="module")
def curved_search(tmp_path_factory):
  """A search whose models carry full learning curves (a user function returning them)."""
  workdir = str(tmp_path_factory.mktemp("curves") / "run")
  search.run_search(config(), workdir, evaluate=curve_evaluate, tensorboard=False)
  return workdir


def test_curves_are_recorded_and_shown(curved_search):
  from metaqnn import inspect as inspect_lib
  s = inspect_lib.summarize(curved_search)
  trained = [m for m in s["models"] if not m["resampled"]]
  assert all(len(m["curves"]) == 1 for m in trained)
  m = trained[0]
  assert m["curves"][0]["val_accuracy"] == pytest.approx(curve_of(parse(m["arch"])))
  assert set(m["curves"][0]) == {"val_accuracy", "train_loss"}
  json.dumps(s)


def test_features_follow_the_follow_up_paper():
  arch = parse("[C(16,3,1), P(2,2), FC(32), SM(10)]")
  f = early_stop.arch_features(arch, (8, 8, 1))
  assert f[:5] == [4.0, 1.0, 1.0, 1.0, 0.0]  # depth, C, P, FC, GAP
  assert early_stop.curve_features([0.2, 0.5, 0.6]) == pytest.approx(
      [0.2, 0.5, 0.6, 0.3, 0.1, -0.2])


def test_offline_replay_predicts_and_saves_epochs(curved_search):
  s = early_stop.evaluate_offline(curved_search, tau=0.25, delta=0.05)
  assert s["stop_epoch"] == 2 and s["models"] >= 60
  assert s["r2"] > 0.8  # the end of these curves follows from their start
  assert s["epochs_saved"] > 0.3
  # The oracle stops every model that ends below the best so far: most of these.
  assert s["epochs_saved"] - 0.1 < s["oracle_epochs_saved"] <= 1 - 2 / EPOCHS
  # The ceiling: all but the true top 10 stopped after epoch 2 (fully trained or not).
  # The rule saves more only by stopping some of them.
  with store_lib.open_existing(curved_search) as store:
    records = [r for r in store.models() if not r.resampled]
  total = sum(len(c["val_accuracy"]) for r in records for c in r.curves)
  full = lambda r: r.status == "ok" and len(r.curves[-1]["val_accuracy"]) == EPOCHS
  top10 = {r.iteration for r in sorted(filter(full, records), key=results.rank_key)[:10]}
  past_tau = sum(max(0, len(r.curves[-1]["val_accuracy"]) - 2) for r in records
                 if r.curves and r.iteration not in top10)
  assert s["ceiling_epochs_saved"] == pytest.approx(past_tau / total)
  assert s["epochs_saved"] <= (s["ceiling_epochs_saved"]
                               + s["top10_stopped"] * (EPOCHS - 2) / total + 1e-12)
  # Not asserted: that the best is kept. These curves' ends depend on a rate that only
  # their shape reveals, and the best is a slow starter that climbs further than any of
  # the first 20 models; the predictor, fitted on those, stops it (see `Predictor`).
  median = early_stop.evaluate_offline(curved_search, kind="median")
  assert 0 < median["epochs_saved"] < 1
  with pytest.raises(ValueError, match="early_stop.top=3 is the predictor's"):
    early_stop.evaluate_offline(curved_search, kind="median", top=3)  # not ignored


def test_offline_command_json_and_errors(curved_search, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, "-m", "metaqnn.early_stop", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
  out = run(f"--workdir={curved_search}", "--json")
  assert out.returncode == 0, out.stderr
  s = json.loads(out.stdout)
  assert {"r2", "epochs_saved", "oracle_epochs_saved", "ceiling_epochs_saved", "top10_stopped",
          "best_stopped"} <= set(s)
  assert s["r2_of"] == "predictor"  # (with --kind=median too: that rule predicts nothing)
  grid = run(f"--workdir={curved_search}", "--json", "--tau=0.125,0.25", "--delta=0.05,0.5")
  assert grid.returncode == 0, grid.stderr
  rows = [json.loads(line) for line in grid.stdout.splitlines()]
  assert [(r["stop_epoch"], r["delta"]) for r in rows] == [(1, 0.05), (1, 0.5), (2, 0.05),
                                                            (2, 0.5)]
  assert rows[2] == s  # the config's defaults: tau 0.25, delta 0.05
  assert "note:" not in grid.stderr
  shared = run(f"--workdir={curved_search}", "--json", "--tau=0.25,0.3")  # 2 and 2.4 epochs
  assert shared.returncode == 0 and len(shared.stdout.splitlines()) == 2
  assert "note: tau 0.25, 0.3 both decide after epoch 2 of 8" in shared.stderr, shared.stderr
  later = run(f"--workdir={curved_search}", "--json", "--min_completed=30")
  assert later.returncode == 0, later.stderr
  later = json.loads(later.stdout)
  assert later["min_completed"] == 30 and s["min_completed"] == 20
  # The oracle acts on a subset of the models: the first 30 are never stopped.
  assert later["oracle_epochs_saved"] < s["oracle_epochs_saved"]
  top3 = run(f"--workdir={curved_search}", "--json", "--top=3")
  assert top3.returncode == 0, top3.stderr
  top3 = json.loads(top3.stdout)
  assert top3["top"] == 3 and s["top"] == 1
  # A lower bar stops fewer, and a rule that knew every end would stop fewer too.
  assert top3["stopped"] <= s["stopped"] and top3["epochs_saved"] <= s["epochs_saved"]
  assert top3["oracle_epochs_saved"] < s["oracle_epochs_saved"]
  twice = run(f"--workdir={curved_search}", "--json", "--tau=0.25,0.25")
  assert [json.loads(line) for line in twice.stdout.splitlines()] == [s]  # one row
  for flags, says in ((["--tau=x"], ""), (["--tau=1.5"], ""), (["--tau=0.25,1.5"], ""),
                      (["--tau="], ""), (["--delta=0.05,"], ""), (["--delta=0"], ""),
                      (["--min_completed=4"], ""),
                      (["--tau=0.95"], "leaves nothing to save; give a lower --tau"),
                      (["--kind=median", "--delta=0.1"], "the median rule has neither"),
                      (["--kind=median", "--top=2"], "the median rule has neither"),
                      (["--top=0"], "--top must be >= 1"),
                      (["--top=1000"], "the rule would never act; give a lower --top")):
    bad = run(f"--workdir={curved_search}", *flags)
    assert bad.returncode == 2 and bad.stderr.startswith("error:"), (flags, bad.stderr)
    assert says in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
  few = run(f"--workdir={curved_search}", "--min_completed=1000")
  assert few.returncode == 2 and "--min_completed can lower it to 5" in few.stderr, few.stderr
  synthetic = config("1.0:10")
  synthetic.evaluator = "synthetic"
  search.run_search(synthetic, str(tmp_path / "syn"), tensorboard=False)
  no_curves = run(f"--workdir={tmp_path / 'syn'}")
  assert no_curves.returncode == 2 and no_curves.stderr.startswith(
      "error: ") and "did not come from metaqnn's trainer (evaluator 'synthetic')" in (
          no_curves.stderr), no_curves.stderr
  search.run_search(config("1.0:10"), str(tmp_path / "fn"), tensorboard=False,
                    evaluate=evaluators.synthetic_accuracy)  # a user's function
  no_curves = run(f"--workdir={tmp_path / 'fn'}")
  assert "(evaluator 'function')" in no_curves.stderr, no_curves.stderr
  bad = run(f"--workdir={tmp_path / 'nope'}")
  assert bad.returncode != 0 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
  assert not (tmp_path / "nope").exists()


def test_offline_command_when_every_model_ends_alike(tmp_path):
  """R^2 is undefined when every final accuracy is the same: JSON null (JSON has no
  NaN) and "undefined" in the text, not NaN; the median rule's text names no delta."""
  def flat(arch):
    acc = [0.5 + 0.05 * min(e, 4) for e in range(EPOCHS)]  # all end at 0.7
    return Result(accuracy=max(acc), best_val_accuracy=max(acc), last_val_accuracy=acc[-1],
                  epochs=len(acc), curves=[{"val_accuracy": acc, "train_loss": acc}])

  workdir = str(tmp_path / "flat")
  search.run_search(config("1.0:30"), workdir, evaluate=flat, tensorboard=False)
  run = lambda *a: subprocess.run([sys.executable, "-m", "metaqnn.early_stop",
                                   f"--workdir={workdir}", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
  out = run("--json")
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout)["r2"] is None and "NaN" not in out.stdout
  text = run("--kind=median")
  assert text.returncode == 0, text.stderr
  assert "R^2 on held-out models (5-fold): undefined" in text.stdout
  assert "delta" not in text.stdout and "the median rule does not use it" in text.stdout


def test_rule_waits_for_min_completed_and_refits_on_a_schedule():
  c = config()
  c.early_stop.kind, c.early_stop.min_completed, c.early_stop.refit_every = "predictor", 5, 3
  rule = early_stop.Rule(c)
  assert [rule._fit_point(n) for n in (4, 5, 7, 8, 11)] == [0, 5, 5, 8, 11]
  assert rule(parse("[C(16,3,1), SM(10)]"), [0.1, 0.1]) is None  # nothing known yet


def _rule_fitted_on(curves, archs):
  c = config()
  c.early_stop.update(kind="predictor", min_completed=len(curves), refit_every=1)
  rule = early_stop.Rule(c)
  for i, (arch, acc) in enumerate(zip(archs, curves)):
    rule.observe(store_lib.ModelRecord(
        accuracy=max(acc), arch=arch, best_val_accuracy=max(acc), iteration=i, sample=i,
        epsilon=1.0, stage=0, curves=[{"val_accuracy": acc, "train_loss": [0.0] * len(acc)}]))
  return rule


def test_a_new_leader_is_not_stopped_and_a_laggard_is():
  """Far from the models it was fitted on, the predictor must not pull an early curve
  better than any seen back toward the average model (it predicts the rise to come)."""
  archs = ["[C(16,3,1), SM(10)]", "[C(32,3,1), P(2,2), SM(10)]", "[C(16,1,1), FC(32), SM(10)]",
           "[C(64,3,1), GAP(10), SM(10)]"] * 6
  rng = np.random.default_rng(0)
  ceilings = rng.uniform(0.3, 0.7, len(archs))
  curves = [[float(c * (1 - np.exp(-0.6 * (e + 1)))) for e in range(EPOCHS)] for c in ceilings]
  rule = _rule_fitted_on(curves, archs)
  lead = [float(0.9 * (1 - np.exp(-0.6 * (e + 1)))) for e in range(EPOCHS)]
  assert rule(parse(archs[0]), lead[:rule.epoch]) is None  # ends near 0.9 > best ~0.7
  lag = [float(0.3 * (1 - np.exp(-0.6 * (e + 1)))) for e in range(EPOCHS)]
  reward, predicted = rule(parse(archs[0]), lag[:rule.epoch])
  assert reward == predicted and predicted == pytest.approx(0.3, abs=0.1)
  # Already above the best so far: certain to end above it, whatever delta says (here
  # every model was flat, so the predicted rise and its spread are near zero).
  flat = _rule_fitted_on([[0.3 + 0.02 * i] * EPOCHS for i in range(len(archs))], archs)
  best = 0.3 + 0.02 * (len(archs) - 1)
  flat.delta = 0.7
  assert flat(parse(archs[0]), [best + 1e-4] * flat.epoch) is None


def test_top_k_spares_a_candidate_that_would_enter_the_top_k():
  """early_stop.top=3: the bar is the third best so far, so a candidate headed between
  the third best and the best trains on; one headed below the third best still stops."""
  archs = ["[C(16,3,1), SM(10)]", "[C(32,3,1), P(2,2), SM(10)]", "[C(16,1,1), FC(32), SM(10)]"]
  flat = [[0.3 + 0.02 * i] * EPOCHS for i in range(24)]  # what each shows is its end
  best, third = flat[-1][0], flat[-3][0]
  between = [(best + third) / 2] * EPOCHS
  rule = _rule_fitted_on(flat, archs * 8)
  assert rule(parse(archs[0]), between[:rule.epoch]) is not None  # cannot beat the best
  rule.top = 3
  assert rule(parse(archs[0]), between[:rule.epoch]) is None  # would be the 2nd or 3rd
  assert rule(parse(archs[0]), [third - 0.05] * rule.epoch) is not None
  rule.top = 25  # more than the 24 models known: nothing is stopped yet
  assert rule(parse(archs[0]), [0.0] * rule.epoch) is None
  assert early_stop.kth_best([0.5, 0.9, 0.7], 2) == 0.7
  assert [early_stop.ordinal(k) for k in (1, 2, 3, 4, 11, 12, 13, 21, 22, 111)] == [
      "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th"]
  # The default leaves the fingerprint as records made before the setting existed had it.
  c = config()
  c.early_stop.kind = "predictor"
  fp = search._rule_fingerprint(c.early_stop)
  assert "top" not in fp and fp == search._rule_fingerprint(
      {k: v for k, v in c.early_stop.items() if k != "top"})
  c.early_stop.top = 3
  assert search._rule_fingerprint(c.early_stop)["top"] == 3
  # inspect describes a predictor's top (1 for a record made before it), a median none
  from metaqnn import inspect as inspect_lib
  stored = {"train": {"epochs": 8}, "early_stop": {"kind": "predictor", "tau": 0.25}}
  assert inspect_lib._early_stop(stored)["top"] == 1
  stored["early_stop"].update(kind="median", top=3)
  assert "top" not in inspect_lib._early_stop(stored)


def test_with_the_soft_objective_the_rule_compares_rewards():
  """Under budget.objective the best is the best reward: a cheap model below the best
  accuracy can still beat it, and is not stopped; a costly one of the same accuracy is."""
  from metaqnn import budget
  c = config()
  c.early_stop.update(kind="predictor", min_completed=24, refit_every=1)
  c.budget.update(objective="params", target=5000.0, weight=-0.07)
  rule, costs = early_stop.Rule(c), budget.Budget.from_config(c)
  archs = ["[C(16,3,1), SM(10)]", "[C(32,3,1), P(2,2), SM(10)]", "[C(16,1,1), FC(32), SM(10)]"]
  rewards = []
  for i in range(24):  # flat curves: every prediction is what it has shown
    arch, acc = archs[i % 3], 0.3 + 0.02 * i
    rewards.append(costs.reward(acc, *budget.cost(arch, (8, 8, 1))))
    rule.observe(store_lib.ModelRecord(
        accuracy=rewards[-1], arch=arch, best_val_accuracy=acc, iteration=i, sample=i,
        epsilon=1.0, stage=0, curves=[{"val_accuracy": [acc] * EPOCHS}]))
  cheap, costly, acc = "[C(64,3,1), GAP(10), SM(10)]", archs[2], 0.70  # 1,290 / 33,162 params
  assert costs.reward(acc, *budget.cost(cheap, (8, 8, 1))) > max(rewards)  # beats the best
  assert costs.reward(acc, *budget.cost(costly, (8, 8, 1))) < max(rewards)
  assert acc < 0.76  # the best accuracy so far (the last model)
  assert rule(parse(cheap), [acc] * rule.epoch) is None
  assert rule(parse(costly), [acc] * rule.epoch) is not None
  rule.by_reward = False  # a search recorded before: by accuracy, as it began
  assert rule(parse(cheap), [acc] * rule.epoch) is not None


@pytest.mark.parametrize("field,value,match", [
    ("kind", "sometimes", "unknown early_stop.kind"), ("tau", 1.0, "tau"),
    ("delta", 0.0, "delta"), ("reward", "best", "early_stop.reward"),
    ("min_completed", 2, "min_completed must be >= 5 and refit_every >= 1, got 2 and"),
    ("top", 0, "early_stop.top must be >= 1")])
@pytest.mark.parametrize("kind", ["predictor", "none"])
def test_bad_settings_are_one_line(field, value, match, kind):
  """With kind "none" too: a value set wrong is a mistake even before it is used."""
  c = config()
  c.early_stop.kind = kind
  c.early_stop[field] = value
  with pytest.raises(ValueError, match=match):
    early_stop.check_config(c)


def test_a_top_for_the_median_rule_is_refused():
  """The median rule compares with the median: a top given with it would be ignored."""
  c = config()
  c.early_stop.update(kind="median", top=3)
  with pytest.raises(ValueError, match="early_stop.top=3 is the predictor's"):
    early_stop.check_config(c)
  c.early_stop.top = 1
  early_stop.check_config(c)
  # A record searched without a rule but with top=3 set replays the median rule.
  c.early_stop.update(kind="none", top=3)
  early_stop._set_replay_rule(c, "median", None, None, None)
  assert early_stop.Rule(c).top == 1


def test_tau_is_checked_against_the_epochs_only_when_a_rule_runs():
  c = config()
  c.train.epochs = 1
  early_stop.check_config(c)  # kind "none": one epoch is fine
  c.early_stop.kind = "median"
  with pytest.raises(ValueError, match="leaves no epoch to save"):
    early_stop.check_config(c)


def test_a_rule_that_would_never_act_is_refused_before_anything_is_written(tmp_path):
  c = config("1.0:12")
  c.early_stop.update(kind="predictor", min_completed=12)
  with pytest.raises(ValueError, match="min_completed=12 waits for as many fully trained "
                     "models as the schedule's 12 unique models: the rule would never act"):
    search.run_search(c, str(tmp_path / "w"), tensorboard=False)  # (the train evaluator)
  assert not os.path.exists(tmp_path / "w")
  c.early_stop.update(min_completed=5, top=12)
  with pytest.raises(ValueError, match="early_stop.top=12 asks candidates to beat the 12th "
                     "best of a schedule of 12 unique models: the rule would never act"):
    search.run_search(c, str(tmp_path / "w"), tensorboard=False)
  assert not os.path.exists(tmp_path / "w")
  c.early_stop.kind = "none"  # no rule: nothing to wait for
  search.run_search(c, str(tmp_path / "w"), evaluate=curve_evaluate, tensorboard=False)


def test_inspect_ranks_fully_trained_models_only(tmp_path):
  """A stopped model's accuracy is a prediction: it is counted, not ranked."""
  from metaqnn import inspect as inspect_lib

  def evaluate(arch):
    r = curve_evaluate(arch)
    if str(arch) == first:  # the first model: stopped, with a prediction above all
      acc = r.curves[0]["val_accuracy"][:2]
      return Result(accuracy=0.999, status="stopped", best_val_accuracy=max(acc),
                    last_val_accuracy=acc[-1], predicted_accuracy=0.999, epochs=2,
                    curves=[{"val_accuracy": acc, "train_loss": [1 - a for a in acc]}])
    return r

  workdir = str(tmp_path / "w")
  c = config("1.0:8")
  first = str(search_space_first(c))
  result = search.run_search(c, workdir, evaluate=evaluate, tensorboard=False)
  assert result.best_arch != first and result.best_accuracy < 0.999
  s = inspect_lib.summarize(workdir)
  assert s["stopped"] == 1 and len(s["top"]) == 7
  assert first not in [m["arch"] for m in s["top"]]
  text = inspect_lib.render(s)
  assert "(not ranked: 1 stopped early, their accuracy predicted or partial)" in text
  # the rewards' header names the stopped models, and no over-budget samples (none here)
  assert "over all samples, re-samples, models stopped early included" in text
  s["early_stop"] = dict(kind="predictor", stop_epoch=2, epochs=8, delta=0.05, top=3,
                         reward="predicted", min_completed=20)
  assert ("delta 0.05, reward predicted, beating the 3rd best so far, once 20 models"
          in inspect_lib.render(s))


def search_space_first(c):
  """The first architecture a search with config `c` samples."""
  from metaqnn import agent as agent_lib, search_space
  return agent_lib.Agent.from_config(search_space.from_config(c), c).sample(1.0).architecture


def _live(workdir, max_models=None):
  c = config("1.0:10")
  c.train.epochs, c.train.batch_size = 4, 64
  c.early_stop.update(kind="predictor", min_completed=5, refit_every=1, delta=0.5)
  search.run_search(c, workdir, tensorboard=False, max_models=max_models)
  store = store_lib.open_existing(workdir)
  try:
    return [(r.arch, r.status, r.accuracy, r.epochs) for r in store.models()]
  finally:
    store.close()


@pytest.mark.slow
def test_live_search_stops_candidates_and_resumes_exactly(tmp_path):
  whole = _live(str(tmp_path / "whole"))
  stopped = [m for m in whole if m[1] == "stopped"]
  assert stopped, whole
  assert all(m[3] == 1 for m in stopped)  # decided after tau * 4 = 1 epoch
  from metaqnn import inspect as inspect_lib
  s = inspect_lib.summarize(str(tmp_path / "whole"))
  assert s["early_stop"]["kind"] == "predictor" and s["early_stop"]["stop_epoch"] == 1
  assert (f"early stopping: predictor, deciding after epoch 1 of 4, delta 0.5, reward "
          f"predicted, once 5 models are fully trained; {len(stopped)} stopped"
          ) in inspect_lib.render(s)
  _live(str(tmp_path / "parts"), max_models=6)
  # Resumed with the rule's flags left off: refused, not run under another rule.
  plain = config("1.0:10")
  plain.train.epochs, plain.train.batch_size = 4, 64
  with pytest.raises(store_lib.WorkdirError, match="made with early_stop .*kind=predictor"):
    search.run_search(plain, str(tmp_path / "parts"), tensorboard=False)
  assert _live(str(tmp_path / "parts")) == whole
  assert "stop_by_reward" in store_lib.stored_meta(str(tmp_path / "parts"))  # a new record


def test_the_median_rule_compares_with_every_completed_model():
  """Its median covers every fully trained model so far, so refit_every (which the
  work directory's fingerprint leaves out for this rule) cannot change a decision."""
  def record(i, seen):
    curve = [seen] * 2 + [0.9] * (EPOCHS - 2)
    return store_lib.ModelRecord(
        accuracy=0.9, best_val_accuracy=0.9, epochs=EPOCHS, arch="[C(16,3,1), SM(10)]",
        iteration=i, sample=i, epsilon=1.0, stage=0,
        curves=[{"val_accuracy": curve, "train_loss": [0.1] * EPOCHS}])
  decisions = []
  for refit_every in (1, 10):
    c = config()
    c.early_stop.kind, c.early_stop.min_completed = "median", 5
    c.early_stop.refit_every = refit_every
    rule = early_stop.Rule(c)
    for i, seen in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.8, 0.8, 0.8]):
      rule.observe(record(i, seen))
    # The median of all eight is 0.45; of the first five, 0.3.
    decisions.append([rule.predict_stop(parse("[C(16,3,1), SM(10)]"), [a, a]) is not None
                      for a in (0.35, 0.5)])
  assert decisions == [[True, False], [True, False]]

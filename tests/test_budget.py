"""Budgets: exact costs, exact pruning, over-budget records, quotas, resume, soft reward."""

import os
import sqlite3

import numpy as np
import pytest

from metaqnn import agent as agent_lib
from metaqnn import budget as budget_lib
from metaqnn import config_lib
from metaqnn import evaluators
from metaqnn import inspect as inspect_lib
from metaqnn import results
from metaqnn import search
from metaqnn import search_space
from metaqnn import store as store_lib
from metaqnn.store import WorkdirError


def small_config(schedule="1.0:30,0.5:15,0.1:15", **budget):
  config = config_lib.base_config("digits")
  config.dataset.val_fraction = 0.2
  config.space.max_depth = 4
  config.space.conv_filters = (8, 16, 32)
  config.space.fc_units = (32, 16)
  config.space.size_bins = (4, 2, 1)
  config.space.fc_max_side = 3
  config.space.pools = ((3, 2), (2, 2))
  config.search.schedule = schedule
  config.search.replay_samples = 20
  config.evaluator = "synthetic"
  config.budget.update(budget)
  return config


def all_architectures(space):
  """Every architecture of `space` as an action tuple (small spaces only)."""
  out = []

  def rec(s, side, actions):
    for a in space.allowed_ids[s]:
      a = int(a)
      nxt, nside = space.step(s, side, a)
      if nxt is None:
        out.append(actions + (a,))
      else:
        rec(nxt, nside, actions + (a,))

  rec(0, space.cfg.image_size, ())
  return out


@pytest.fixture(scope="module")
def space_and_costs():
  config = small_config()
  space = search_space.from_config(config)
  archs = all_architectures(space)
  assert len(archs) == space.count_architectures()
  costs = {a: budget_lib.cost(space.architecture(a), (8, 8, 1)) for a in archs}
  return config, space, costs


def test_costs_match_the_flax_models(space_and_costs):
  """Parameters against the Flax models' own parameter trees (the formulas are written
  once, in budget.layer_cost; this checks them against what trains)."""
  from metaqnn import models
  flax_params = lambda arch, shape: models.tree_size(models.param_shapes(models.CNN(arch),
                                                                         shape))
  _, space, costs = space_and_costs
  rng = np.random.default_rng(0)
  keys = list(costs)
  for i in rng.choice(len(keys), 40, replace=False):
    arch = space.architecture(keys[i])
    assert costs[keys[i]][0] == flax_params(arch, (8, 8, 1))
    assert costs[keys[i]][1] == models.flops_per_example(arch, (8, 8, 1))
  # and on a colour, pooled, FC-headed network, and a non-square input
  from metaqnn.architecture import parse
  arch = parse("[C(16,3,1), P(2,2), C(32,5,1), FC(64), FC(32), SM(10)]")
  for shape in ((28, 28, 3), (28, 20, 3)):
    assert budget_lib.cost(arch, shape)[0] == flax_params(arch, shape)


@pytest.mark.parametrize("limit", ["params", "flops"])
def test_pruning_is_exact(space_and_costs, limit):
  """Masked actions lead only over budget, and every in-budget architecture stays
  reachable: the minimum at the start is the true minimum, and each in-budget path keeps
  all of its actions unmasked."""
  config, space, costs = space_and_costs
  col = 0 if limit == "params" else 1
  values = np.array([c[col] for c in costs.values()])
  cap = int(np.percentile(values, 20))
  budget = budget_lib.Budget(**{f"max_{limit}": cap})
  pruner = budget_lib.Pruner(space, 1, budget)
  assert pruner.minimum(pruner.start)[col] == values.min()
  fits = {a for a, c in costs.items() if c[col] <= cap}
  assert 0 < len(fits) < len(costs)
  for actions in fits:  # replay each in-budget path through the masked sampler
    it = iter(actions)
    seen = []

    def choose(s, ids):
      a = next(it)
      seen.append(a in set(int(i) for i in ids))
      return a

    path = pruner.walk(choose)
    assert path.actions == actions and all(seen)
  # And a masked random walk never leaves the budget.
  agent = agent_lib.Agent(space, seed=1)
  agent.pruner = pruner
  for _ in range(300):
    assert space.path(agent.sample(1.0).architecture).actions in fits


def test_greedy_choice_respects_the_mask(space_and_costs):
  _, space, costs = space_and_costs
  cap = int(np.percentile([c[0] for c in costs.values()], 20))
  agent = agent_lib.Agent(space, seed=0)
  agent.q[space.allowed] = 0.0
  # Make the biggest architecture the greedy favourite: every action on its path.
  big = max(costs, key=lambda a: costs[a][0])
  path = space.path(space.architecture(big))
  for s, a in zip(path.states, path.actions):
    agent.q[s, a] = 1.0
  assert str(agent.sample(0.0).architecture) == str(space.architecture(big))
  agent.pruner = budget_lib.Pruner(space, 1, budget_lib.Budget(max_params=cap))
  for _ in range(20):
    arch = agent.sample(0.0).architecture
    assert budget_lib.cost(arch, (8, 8, 1))[0] <= cap


def test_infeasible_budget_is_said_at_the_start(tmp_path):
  config = small_config(max_params=5)
  with pytest.raises(budget_lib.BudgetError, match="smallest has 20 parameters"):
    search.run_search(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
  with pytest.raises(budget_lib.BudgetError, match="objective"):
    search.run_search(small_config(objective="flops"), str(tmp_path / "w"))


def _records(workdir):
  store = store_lib.open_existing(str(workdir))
  try:
    return list(store.models())
  finally:
    store.close()


def _cap(config, q=20):
  space = search_space.from_config(config)
  agent = agent_lib.Agent(space, seed=123)
  params = [budget_lib.cost(agent.sample(1.0).architecture, (8, 8, 1))[0] for _ in range(500)]
  return int(np.percentile(params, q))


@pytest.mark.parametrize("prune", [True, False])
def test_over_budget_is_never_trained_and_quotas_stay_exact(tmp_path, prune):
  cap = _cap(small_config(), 40)
  config = small_config(max_params=cap, prune=prune, over_budget_reward=0.05)
  trained = []

  def evaluate(arch):
    trained.append(str(arch))
    return evaluators.synthetic_accuracy(arch)

  result = search.run_search(config, str(tmp_path / "w"), evaluate=evaluate,
                             tensorboard=False)
  assert result.finished
  recs = _records(tmp_path / "w")
  over = [r for r in recs if r.status == results.OVER_BUDGET]
  ok = [r for r in recs if r.status == "ok" and not r.resampled]
  assert all(r.params <= cap for r in ok) and len(ok) == len(set(trained)) == 60
  assert all(budget_lib.cost(a, (8, 8, 1))[0] <= cap for a in trained)
  assert all(r.params > cap and r.accuracy == 0.05 for r in over)
  assert all("max_params" in r.message for r in over if not r.resampled)
  assert all(r.params is not None and r.flops is not None for r in recs)
  if prune:
    assert not over  # one limit: the masked sampler never leaves it
  else:
    assert over and any(not r.resampled for r in over)
  # Stage epsilons follow the count of trained unique models only.
  before = 0
  for r in recs:
    assert r.epsilon == (1.0 if before < 30 else 0.5 if before < 45 else 0.1)
    before += (not r.resampled and r.status != results.OVER_BUDGET)
  summary = inspect_lib.summarize(str(tmp_path / "w"))
  assert summary["unique_models"] == 60 and summary["schedule"]["finished"]
  assert summary["over_budget"] == len(over)
  assert all("params" in m and "flops" in m for m in summary["models"])
  assert "over_budget" not in {f["status"] for f in summary["failures"]}


def test_resume_with_a_budget_is_exact(tmp_path):
  cap = _cap(small_config(), 40)
  config = small_config("1.0:20,0.5:5,0.1:5", max_params=cap, prune=False)
  search.run_search(config, str(tmp_path / "ref"), tensorboard=False)
  total = len(_records(tmp_path / "ref"))
  runs = 1
  while not search.run_search(config, str(tmp_path / "w"), max_models=total // 4 + 1,
                              tensorboard=False).finished:
    runs += 1
  assert runs >= 4
  key = lambda r: (r.arch, r.accuracy, r.status, r.resampled, r.epsilon, r.params, r.flops)
  assert [key(r) for r in _records(tmp_path / "w")] == [
      key(r) for r in _records(tmp_path / "ref")]


def test_budget_is_in_the_fingerprint_only_when_set(tmp_path):
  config = small_config(schedule="1.0:5")
  assert "budget" not in search.fingerprint(config, "synthetic", 20)
  search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  with pytest.raises(WorkdirError, match="budget"):
    search.run_search(small_config(schedule="1.0:5", max_params=10**6), str(tmp_path / "w"))
  with_budget = small_config(schedule="1.0:5", max_flops=10**6)
  search.run_search(with_budget, str(tmp_path / "b"), tensorboard=False)
  with pytest.raises(WorkdirError, match="budget"):
    search.run_search(small_config(schedule="1.0:5", max_flops=10**5), str(tmp_path / "b"))
  assert search.run_search(with_budget, str(tmp_path / "b")).finished
  # Without an objective its target and weight would change nothing: given, they are a
  # mistake, said as such (not as another search).
  unused = small_config(schedule="1.0:5", max_flops=10**6, target=1000, weight=-0.5)
  with pytest.raises(budget_lib.BudgetError, match="shapes? the soft objective only"):
    search.run_search(unused, str(tmp_path / "b"))
  with pytest.raises(WorkdirError, match="differs in: budget"):  # with one, they count
    search.run_search(small_config(schedule="1.0:5", max_flops=10**6, objective="params",
                                   target=1000), str(tmp_path / "b"))


def test_a_record_without_the_flops_column_still_opens_and_resumes(tmp_path):
  config = small_config(schedule="1.0:5,0.5:5")
  search.run_search(config, str(tmp_path / "w"), max_models=5, tensorboard=False)
  db = sqlite3.connect(tmp_path / "w" / "metaqnn.db")
  db.execute("ALTER TABLE models DROP COLUMN flops")
  db.commit()
  db.close()
  assert all(r.flops is None for r in _records(tmp_path / "w"))  # read-only: defaults
  assert search.run_search(config, str(tmp_path / "w"), tensorboard=False).finished
  recs = _records(tmp_path / "w")
  assert recs[0].flops is None and recs[-1].flops is not None


def test_soft_objective():
  b = budget_lib.Budget(objective="params", target=1000, weight=-0.5)
  assert b.reward(0.8, 1000, 0) == pytest.approx(0.8)
  assert b.reward(0.8, 4000, 0) == pytest.approx(0.4)
  assert b.reward(0.8, 250, 0) == 1.0  # capped
  assert budget_lib.Budget().reward(0.7, 10**9, 10**9) == 0.7
  # The steepest weight, a cost far below the target: capped, not an overflow that
  # crashed the search after its first model (nor a zero accuracy rewarded).
  steep = budget_lib.Budget(objective="params", target=1e40, weight=-10)
  assert steep.reward(0.5, 1, 0) == 1.0 and steep.reward(0.0, 1, 0) == 0.0


@pytest.mark.parametrize("setting,match", [
    (dict(target=float("inf")), "finite config.budget.target > 0"),
    (dict(target=float("nan")), "finite config.budget.target > 0"),
    (dict(target=-3.0), "finite config.budget.target > 0"),
    (dict(target=1000, weight=float("nan")), "weight=nan must be in \\[-10, 0\\)"),
    (dict(target=1000, weight=0.5), "weight=0.5 must be in \\[-10, 0\\)"),
    (dict(target=1000, weight=float("-inf")), "must be in \\[-10, 0\\)"),
    (dict(target=1000, weight=-1e30), "must be in \\[-10, 0\\)")])
def test_soft_objective_bad_settings_are_one_line(setting, match):
  """An infinite target divided by zero mid-search (a traceback, the work directory
  made); a NaN weight gave every model the reward 1."""
  with pytest.raises(budget_lib.BudgetError, match=match):
    budget_lib.Budget(objective="params", **setting)


@pytest.mark.parametrize("reward", [1.5, float("nan"), float("inf")])
def test_an_over_budget_reward_above_any_accuracy_is_refused(reward):
  with pytest.raises(budget_lib.BudgetError, match="over_budget_reward=.* must be a finite"):
    budget_lib.Budget(max_params=1000, over_budget_reward=reward)
  budget_lib.Budget(max_params=1000, over_budget_reward=-0.5)  # a penalty is allowed


def test_soft_objective_in_a_search(tmp_path):
  config = small_config(schedule="1.0:10", objective="flops", target=5000, weight=-0.3)
  search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  b = budget_lib.Budget.from_config(config)
  for r in _records(tmp_path / "w"):
    assert r.accuracy == pytest.approx(b.reward(r.best_val_accuracy, r.params, r.flops))
  summary = inspect_lib.summarize(str(tmp_path / "w"))
  assert summary["budget"] == {"objective": "flops", "target": 5000, "weight": -0.3}
  # Shown beside the reward, the validation accuracy it came from, in inspect and the log.
  text = inspect_lib.render(summary)
  assert "mean reward per epsilon" in text and "accuracy    reward" in text
  assert summary["reward_kind"] == "reward"
  top = summary["top"][0]
  assert top["best_val_accuracy"] != pytest.approx(top["accuracy"])  # scaled by the cost
  assert f"{top['best_val_accuracy']:.4f}  {top['accuracy']:.4f}" in text
  from metaqnn import agent as agent_lib, progress
  rec = next(r for r in _records(tmp_path / "w") if r.iteration == top["iteration"])
  line = progress.Progress(agent_lib.Schedule.parse("1.0:10")).line(rec, 10)
  assert f"reward {top['accuracy']:.4f} (val acc {top['best_val_accuracy']:.4f})" in line
  # The log and inspect's table give the model the same sample number.
  assert f"| sample {rec.iteration + 1}]" in line
  assert f"#{rec.iteration + 1:<8d} {top['arch']}" in text
  # The agent's choice now, when it was sampled: its reward is named so.
  summary["greedy"].update(iteration=rec.iteration, accuracy=top["accuracy"], status="ok")
  assert (f"sample #{rec.iteration + 1}: reward {top['accuracy']:.4f} (ok)"
          in inspect_lib.render(summary))


def test_rewards_capped_at_one_rank_by_validation_accuracy(tmp_path):
  """A steep objective caps many rewards at 1: inspect, the final stage and the search's
  result rank those ties by validation accuracy, not by which was sampled first."""
  from metaqnn import finalize
  config = small_config(schedule="1.0:8", objective="params", target=10**6, weight=-1.0)
  config.seed = 1
  result = search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  capped = [r for r in _records(tmp_path / "w")
            if r.status == "ok" and r.accuracy == 1.0 and not r.resampled]
  assert len(capped) >= 3
  want = sorted(capped, key=lambda r: (-r.best_val_accuracy, r.iteration))
  assert want[0].iteration != min(r.iteration for r in capped)  # sample order would differ
  top = inspect_lib.summarize(str(tmp_path / "w"))["top"]
  assert [m["iteration"] for m in top[:len(want)]] == [r.iteration for r in want]
  _, best = finalize.top_models(str(tmp_path / "w"), len(want))
  assert [r.iteration for r in best] == [r.iteration for r in want]
  assert result.best_arch == want[0].arch


def test_a_user_evaluate_under_the_objective_keeps_its_accuracy(tmp_path):
  """A user's evaluate that returns a Result with its accuracy only: the record keeps it
  as the validation accuracy beside the scaled reward (the final stage and the ranking
  read it there)."""
  config = small_config(schedule="1.0:6", objective="params", target=10**6, weight=-1.0)
  accuracy = lambda arch: 0.3 + 0.01 * len(arch.layers)
  search.run_search(config, str(tmp_path / "w"), tensorboard=False,
                    evaluate=lambda arch: results.Result(accuracy=accuracy(arch)))
  recs = [r for r in _records(tmp_path / "w") if not r.resampled]
  assert recs and all(r.accuracy == 1.0 for r in recs)  # capped: every reward ties
  from metaqnn.architecture import parse
  assert all(r.best_val_accuracy == pytest.approx(accuracy(parse(r.arch))) for r in recs)


def test_soft_objective_scales_every_reward_training_earned(tmp_path):
  """Stopped (early stopping) and timed-out models get the objective too: unscaled, a
  stopped model's prediction would out-earn every fully trained model. A timeout before
  any attempt learned keeps the chance reward, like a model that did not learn."""
  from metaqnn.results import Result
  raw = {}

  def evaluate(arch):
    kind = len(raw) % 4
    value = 0.1 if kind == 3 else 0.5 + (len(str(arch)) % 40) / 100  # 0.1: chance
    status = ("ok", "stopped", "timeout", "timeout")[kind]
    raw[str(arch)] = value
    return Result(accuracy=value, status=status, best_val_accuracy=value,
                  predicted_accuracy=value if status == "stopped" else None)

  config = small_config(schedule="1.0:12", objective="params", target=1000, weight=-0.3)
  search.run_search(config, str(tmp_path / "w"), tensorboard=False, evaluate=evaluate)
  b = budget_lib.Budget.from_config(config)
  records = [r for r in _records(tmp_path / "w") if not r.resampled]
  assert {r.status for r in records} == {"ok", "stopped", "timeout"}
  assert any(raw[r.arch] == 0.1 for r in records)
  for r in records:
    scaled = b.reward(raw[r.arch], r.params, r.flops)
    assert r.accuracy == pytest.approx(raw[r.arch] if raw[r.arch] == 0.1 else scaled)


def test_a_record_made_before_keeps_its_objective_rule_on_resume(tmp_path):
  """A record whose fingerprint predates the early_stop entry was made when the objective
  scaled fully trained models only: resumed, it goes on so, not with two rules."""
  import json
  from metaqnn.results import Result
  from metaqnn import store as store_lib

  def evaluate(arch):
    return Result(accuracy=0.6, status="stopped", best_val_accuracy=0.6,
                  predicted_accuracy=0.6)

  config = small_config(schedule="1.0:8", objective="params", target=1000, weight=-0.3)
  work = str(tmp_path / "w")
  search.run_search(config, work, tensorboard=False, evaluate=evaluate, max_models=3)
  db = sqlite3.connect(os.path.join(work, store_lib.DB_FILE))
  stored = json.loads(db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()[0])
  del stored["early_stop"]
  with db:
    db.execute("UPDATE meta SET value=? WHERE key='fingerprint'", (json.dumps(stored),))
    db.execute("UPDATE models SET accuracy=0.6")  # as that version recorded them
  db.close()
  search.run_search(config, work, tensorboard=False, evaluate=evaluate)
  records = [r for r in _records(tmp_path / "w") if not r.resampled]
  assert len(records) == 8 and {r.accuracy for r in records} == {0.6}


def test_final_stage_respects_the_budget(tmp_path):
  from metaqnn import finalize
  config = small_config("1.0:20", max_params=_cap(small_config(), 50), prune=False)
  search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  stored, top = finalize.top_models(str(tmp_path / "w"), 100)
  assert top and all(r.params <= config.budget.max_params for r in top)
  # A record marked ok but over the limit (e.g. from an edited record) is left out too.
  over = store_lib.ModelRecord(iteration=0, sample=0, arch="[C(32,5,1), FC(32), SM(10)]",
                               accuracy=0.99, epsilon=1.0, stage=0)
  assert not finalize.within_budget(stored, over)
  assert finalize.within_budget(small_config(), over)


def test_count_within_is_exact(space_and_costs):
  _, space, costs = space_and_costs
  for cap_p, cap_f in ((650, 0), (3000, 0), (0, 20000), (5000, 60000)):
    b = budget_lib.Budget(max_params=cap_p, max_flops=cap_f)
    fits = sum((not cap_p or p <= cap_p) and (not cap_f or f <= cap_f)
               for p, f in costs.values())
    pruner = budget_lib.Pruner(space, 1, b)
    assert pruner.count_within(10**9) == fits
    assert pruner.count_within(3) == min(3, fits)


def test_a_schedule_longer_than_the_budget_allows_is_refused(tmp_path):
  config = small_config("1.0:30,0.1:30", max_params=100)
  with pytest.raises(budget_lib.BudgetError, match="only 1 architecture of .* fits the "
                     "budget \\(max_params=100\\) but .* asks for 60"):  # no "max_flops=0"
    search.run_search(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_inspect_shows_costs_and_the_budget(tmp_path):
  config = small_config("1.0:10", max_params=_cap(small_config(), 40), prune=False)
  search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  summary = inspect_lib.summarize(str(tmp_path / "w"))
  text = inspect_lib.render(summary)
  assert "params" in text and "FLOPs" in text
  assert f"budget: max_params {config.budget.max_params:,}" in text
  assert f"{summary['over_budget']} over-budget samples" in text and summary["over_budget"] > 0
  assert "mean reward per epsilon" in text  # their 0 is a reward, not an accuracy
  assert "re-samples, over-budget samples included" in text  # nothing was stopped early
  assert summary["reward_kind"] == "reward"
  top = summary["top"][0]
  # The agent's choice, fully trained: its value is a validation accuracy, not a reward.
  summary["greedy"].update(iteration=top["iteration"], accuracy=top["accuracy"], status="ok")
  assert (f"sample #{top['iteration'] + 1}: {top['accuracy']:.4f} (ok)"
          in inspect_lib.render(summary))
  assert f"{top['params']:,}" in text and f"{top['flops']:,}" in text
  assert all(m["status"] == "over_budget" for m in summary["models"]
             if m["params"] > config.budget.max_params)
  # Over-budget samples are never trained: the unique models per epsilon leave them out.
  assert sum(v["unique"] for v in summary["mean_accuracy_by_epsilon"].values()) == 10
  assert summary["unique_models"] == 10
  assert summary["budget"] == {"max_params": config.budget.max_params,
                               "over_budget_reward": 0.0}
  summary["budget"] = {"objective": "flops", "target": 5e6, "weight": -0.07}
  assert "target 5,000,000, weight -0.07" in inspect_lib.render(summary)  # not 5e+06
  summary["budget"]["target"] = 2500.5
  assert "target 2,500.5," in inspect_lib.render(summary)


@pytest.mark.parametrize("prune", [False, True])
def test_a_stalled_search_under_a_budget_names_what_works(tmp_path, monkeypatch,
                                                        prune):
  """config.space and budget.prune are part of the record: the message does not say to
  change them and run the same command (that resume is refused), but names what does."""
  config = small_config("1.0:10", max_params=_cap(small_config(), 5), prune=prune)
  config.space.max_depth = 1
  monkeypatch.setattr(budget_lib, "check_space", lambda *a: None)  # say the count erred
  monkeypatch.setattr(search, "MAX_STALL", 200)
  with pytest.raises(search.SearchStalled) as stalled:
    search.run_search(config, str(tmp_path / "w"), log_interval=100, tensorboard=False)
  message = str(stalled.value)
  assert "shorten search.schedule and run the same command" in message
  assert ("start a new work directory with budget.prune=True" in message) == (not prune)
  assert "looser budget" in message and "enlarge config.space or" not in message


def test_the_space_command_counts_and_walks_within_a_budget():
  """`metaqnn.space` with a budget: stats counts what fits (the search's exact count),
  sample's walks stay within it as the search's pruned walks do."""
  import json
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = lambda command, *args: subprocess.run(
      [sys.executable, "-m", "metaqnn.space", command, "--config=configs/digits.py", *args],
      cwd=root, capture_output=True, text=True, timeout=120)
  from configs import digits
  pruner = budget_lib.Pruner(search_space.from_config(digits.get_config()), 1,
                             budget_lib.Budget(max_params=1000))
  stats = run("stats", "--config.budget.max_params=1000")
  assert stats.returncode == 0, stats.stderr
  stats = json.loads(stats.stdout)
  assert stats["within_budget"] == pruner.count_within(10**6) and stats["within_budget_exact"]
  sample = run("sample", "--num=200", "--config.budget.max_params=1e3")  # as limits are written
  costs = [budget_lib.cost(line, (8, 8, 1))[0] for line in sample.stdout.splitlines()]
  assert len(costs) == 200 and max(costs) <= 1000
  # costs: percentiles of the same draws as sample's, to choose a budget by
  for how in ([], ["--uniform"], ["--config.budget.max_params=1e3"]):
    drawn = run("sample", "--num=300", "--seed=2", *how).stdout.splitlines()
    table = run("costs", "--num=300", "--seed=2", *how)
    assert table.returncode == 0, table.stderr
    table = json.loads(table.stdout)
    assert table["samples"] == 300 and list(table["params"]) == [str(q) for q in range(0, 101, 10)]
    for i, kind in enumerate(("params", "flops")):
      values = [budget_lib.cost(line, (8, 8, 1))[i] for line in drawn]
      assert table[kind] == {str(q): int(np.percentile(values, q)) for q in range(0, 101, 10)}
  assert table["params"]["100"] <= 1000
  assert json.loads(run("costs").stdout)["samples"] == 2000  # not sample's default of 10
  for args in (["stats", "--config.budget.max_params=10"],
               ["sample", "--config.budget.max_params=10", "--config.budget.prune=False"],
               ["sample", "--uniform", "--config.budget.max_params=1000"],
               ["costs", "--num=0"],
               ["stats", "--config.budget=1000"]):  # a group, not a value: said so
    refused = run(*args)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
  assert "--config.budget is a group of settings, not one value" in refused.stderr
  refused = run("stats", "--config.budget.prune=2")  # not a tuple's repr
  assert refused.stderr == "error: --config.budget.prune=2: this setting takes True or False\n"
  # Limits that are not whole numbers, or beyond any cost, are said to be so (not in
  # int()'s words, which blamed the notation).
  for value, said in (("1e20", "must be at most 2,305,843,009,213,693,951"),
                      ("100000.0", "takes a whole number"), ("abc", "takes a whole number"),
                      ("99999999999999999999", "must be at most 2,305,843,009,213,693,951"),
                      ("1e30", "=1e30: too large for this setting"),  # whole, not "takes one"
                      ("1e300", "=1e300: too large for this setting"),
                      ("1e999999999", "too large")):  # (Decimal overflowed against 10**30)
    refused = run("stats", f"--config.budget.max_flops={value}")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert said in refused.stderr and "int()" not in refused.stderr


@pytest.mark.parametrize("given,read", [
    ("--config.budget.max_flops=1e8", "--config.budget.max_flops=100000000"),
    ("--config.budget.max_params=2.5E3", "--config.budget.max_params=2500"),
    ("--config.budget.max_params=12345678901234567e0",  # exactly, not rounded by a float
     "--config.budget.max_params=12345678901234567"),
    ("--config.train.learning_rate=1e-3", "--config.train.learning_rate=1e-3"),
    ("--config.budget.max_flops=1e400", "--config.budget.max_flops=1e400"),  # refused later
    ("--config.budget.max_flops=nan", "--config.budget.max_flops=nan"),
    ("--seed=1e3", "--seed=1e3"),  # not a config field: left to its flag
])
def test_limits_may_be_written_in_exponent_notation(given, read):
  from metaqnn import cli
  assert cli._whole_numbers(["prog", given]) == ["prog", read]  # pylint: disable=protected-access
  name, _, value = given.partition("=")  # the same as two arguments
  two = cli._whole_numbers(["prog", name, value, "--workdir=w"])  # pylint: disable=protected-access
  assert two == (["prog", read, "--workdir=w"] if read != given
                 else ["prog", name, value, "--workdir=w"])


def test_objective_settings_without_an_objective_are_refused(tmp_path):
  """They would change nothing: a forgotten budget.objective, most likely."""
  for field, value in (("target", 20000.0), ("weight", -0.2)):
    config = small_config("1.0:5")
    config.budget[field] = value
    with pytest.raises(budget_lib.BudgetError, match=f"config.budget.{field}=.* shapes the "
                       "soft objective only; set config.budget.objective"):
      search.run_search(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
    config.budget.objective = "params"
    config.budget.target = 20000.0
    search.run_search(config, str(tmp_path / field), log_interval=1e9, tensorboard=False)

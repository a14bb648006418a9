"""The analysis figures: written as PNGs from work directories; Q-value summaries."""

import json
import os

import pytest

from metaqnn import agent as agent_lib
from metaqnn import config_lib
from metaqnn import plots
from metaqnn import search
from metaqnn import search_space
from metaqnn.store import WorkdirError


def run(tmp_path, seed, dataset="mnist"):
  config = config_lib.base_config(dataset)
  config.seed = seed
  config.evaluator = "synthetic"
  config.search.schedule = "1.0:40,0.5:20,0.1:20"
  config.search.replay_samples = 20
  workdir = str(tmp_path / f"{dataset}{seed}")
  search.run_search(config, workdir, log_interval=1e9, tensorboard=False)
  return workdir


def test_write_all_single_and_stability(tmp_path):
  one = run(tmp_path, 0)
  paths = plots.write_all([one])
  assert sorted(p.rsplit("/", 1)[1] for p in paths) == [
      "accuracy_by_epsilon.png", "accuracy_vs_cost.png", "q_values.png",
      "rolling_accuracy.png"]
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  many = plots.write_all([one, run(tmp_path, 1)], str(tmp_path / "out"))
  assert any(p.endswith("stability.png") for p in many) and len(many) == 9


def test_runs_in_folders_of_the_same_name_keep_their_own_figures(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  runs = [run(tmp_path / "a", 0), run(tmp_path / "b", 1)]  # both named mnist<seed>
  os.rename(runs[1], str(tmp_path / "b" / "mnist0"))
  runs[1] = str(tmp_path / "b" / "mnist0")
  paths = plots.write_all(runs, str(tmp_path / "out"))
  assert len(set(paths)) == len(paths) == 9
  assert any(os.path.basename(p).startswith("a_mnist0_") for p in paths)
  assert any(os.path.basename(p).startswith("b_mnist0_") for p in paths)
  with pytest.raises(plots.cli.UserError, match="given twice"):
    plots.write_all([runs[0], runs[0] + "/"], str(tmp_path / "again"))
  assert not os.path.exists(tmp_path / "again")


def test_no_stability_figure_across_data_sets(tmp_path, capsys):
  """Accuracies on different data sets do not average into a stability curve."""
  paths = plots.write_all([run(tmp_path, 0), run(tmp_path, 1, "cifar10")],
                          str(tmp_path / "out"))
  assert len(paths) == 8 and not any(p.endswith("stability.png") for p in paths)
  err = capsys.readouterr().err
  assert "different data sets (cifar10, mnist)" in err
  # Synthetic rewards come with no curves: the figure left out is said to be.
  assert err.count("learning_curves.png not written: ") == 2 and "holds no learning" in err


def test_q_by_depth_averages_the_right_pairs():
  config = config_lib.base_config("mnist")
  space = search_space.from_config(config)
  agent = agent_lib.Agent(space)
  sm = space.action_index[space.actions[-1]]
  agent.q[0, sm] = 0.1  # softmax straight from the start: the only depth-1 softmax
  types, fields = plots.q_by_depth(agent)
  assert types["softmax"][1] == pytest.approx(0.1)
  assert types["convolution"][1] == pytest.approx(0.5)
  assert set(fields) == {"1x1", "3x3", "5x5"}
  assert max(types["pooling"]) <= config.space.max_depth
  assert min(types["pooling"]) == 2  # never from the start state


def test_the_q_value_figure_says_how_many_actions_were_never_updated(tmp_path, monkeypatch):
  from matplotlib.figure import Figure
  saved = []
  monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
  space = search_space.from_config(config_lib.base_config("mnist"))
  agent = agent_lib.Agent(space)
  allowed = int(space.allowed.sum())
  agent.q[0, space.allowed_ids[0][:3]] = 0.7  # three actions learned something
  plots.plot_q_values(agent, str(tmp_path / "q.png"), "mnist")
  assert (f"{allowed - 3:,} of {allowed:,} still at the initial Q-value 0.5"
          in saved[0]._suptitle.get_text())


def test_missing_workdir_is_a_clear_error_and_creates_nothing(tmp_path):
  with pytest.raises(WorkdirError, match="no metaqnn search"):
    plots.write_all([str(tmp_path / "nothing")])
  assert not (tmp_path / "nothing").exists()


def test_an_out_that_is_a_file_is_a_clear_error(tmp_path):
  one = run(tmp_path, 0)
  (tmp_path / "afile").write_text("mine")
  with pytest.raises(ValueError, match="afile is a file, not a folder"):
    plots.write_all([one], str(tmp_path / "afile"))
  assert (tmp_path / "afile").read_text() == "mine"


def test_pareto_front():
  costs = [5, 1, 3, 3, 8, 2]
  accs = [0.9, 0.5, 0.7, 0.8, 0.85, 0.4]
  # 1 (0.5) -> 3 (0.8, beats the other cost-3 model) -> 5 (0.9); 8 is dominated by 5.
  assert plots.pareto_front(costs, accs) == [1, 3, 0]
  assert plots.pareto_front([], []) == []


def test_cost_plot_with_a_budget(tmp_path):
  config = config_lib.base_config("mnist")
  config.evaluator = "synthetic"
  config.search.schedule = "1.0:30"
  config.search.replay_samples = 5
  config.budget.max_params = 200_000
  config.budget.prune = False
  workdir = str(tmp_path / "w")
  search.run_search(config, workdir, log_interval=1e9, tensorboard=False)
  _, records, _ = plots.load_run(workdir)
  rows = plots._costs(config, records)
  assert len(rows) == 30 and all(p <= 200_000 for _, p, _, _ in rows)
  paths = plots.write_all([workdir])
  assert any(p.endswith("accuracy_vs_cost.png") for p in paths)


def test_the_cost_plot_of_a_soft_objective_shows_accuracy_not_reward(tmp_path):
  """The reward already counts the cost: the front is drawn over validation accuracy."""
  config = config_lib.base_config("mnist")
  config.evaluator, config.search.schedule = "synthetic", "1.0:10"
  config.budget.objective, config.budget.target, config.budget.weight = "params", 5000, -0.5
  workdir = str(tmp_path / "w")
  search.run_search(config, workdir, log_interval=1e9, tensorboard=False)
  _, records, _ = plots.load_run(workdir)
  rows = plots._costs(config, records)
  assert [acc for r, _, _, acc in rows] == [r.best_val_accuracy for r, _, _, _ in rows]
  assert any(abs(r.accuracy - acc) > 1e-6 for r, _, _, acc in rows)  # rewards differ
  # Figures 3, A4 and A3 plot the agent's rewards: named so, not "validation accuracy".
  assert plots._what(config, records) == "reward"
  assert plots._what(*plots.load_run(run(tmp_path, 0))[:2]) == "validation accuracy"


def test_no_stability_figure_across_rewards_defined_differently(tmp_path, capsys):
  """A budget's objective changes what a reward is: such runs do not average either."""
  config = config_lib.base_config("mnist")
  config.evaluator, config.search.schedule = "synthetic", "1.0:40,0.5:20,0.1:20"
  config.budget.objective, config.budget.target = "params", 5000
  shaped = str(tmp_path / "shaped")
  search.run_search(config, shaped, log_interval=1e9, tensorboard=False)
  paths = plots.write_all([run(tmp_path, 0), shaped], str(tmp_path / "out"))
  assert not any(p.endswith("stability.png") for p in paths)
  assert "rewards are defined differently" in capsys.readouterr().err
  # Made-up rewards (synthetic) and a user's do not average either.
  config = config_lib.base_config("mnist")
  config.search.schedule = "1.0:40,0.5:20,0.1:20"
  user = str(tmp_path / "user")
  search.run_search(config, user, log_interval=1e9, tensorboard=False,
                    evaluate=lambda arch: 0.5 + 0.01 * len(arch.layers))
  paths = plots.write_all([run(tmp_path, 0), user], str(tmp_path / "out2"))
  assert not any(p.endswith("stability.png") for p in paths)
  assert "rewards are defined differently (they differ in evaluator)" in capsys.readouterr().err
  # Made-up rewards ignore the training settings: such runs average.
  config = config_lib.base_config("mnist")
  config.evaluator, config.search.schedule = "synthetic", "1.0:40,0.5:20,0.1:20"
  config.train.epochs, config.seed = 2, 1
  short = str(tmp_path / "short")
  search.run_search(config, short, log_interval=1e9, tensorboard=False)
  paths = plots.write_all([run(tmp_path, 0), short], str(tmp_path / "out3"))
  assert any(p.endswith("stability.png") for p in paths)


def test_no_stability_figure_across_trainings(tmp_path, capsys):
  """Accuracies of other training do not average (a seed study keeps all but the seed),
  and the differing setting is named; a record of an earlier version, whose stored
  settings lack later fields, still averages with a new one."""
  import sqlite3

  def trained(name, epochs, seed):
    c = config_lib.base_config("digits")
    c.dataset.val_fraction, c.space.max_depth = 0.2, 2
    c.search.schedule, c.search.replay_samples = "1.0:2", 2
    c.train.epochs, c.train.batch_size, c.seed = epochs, 64, seed
    search.run_search(c, str(tmp_path / name), log_interval=1e9, tensorboard=False)
    return str(tmp_path / name)

  a, b, longer = trained("a", 1, 0), trained("b", 1, 1), trained("longer", 2, 2)
  db = sqlite3.connect(os.path.join(b, "metaqnn.db"))  # as an earlier version stored it
  config = json.loads(db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
  del config["train"]["dtype"], config["dataset"]["resize"]
  with db:
    db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(config),))
  db.close()
  assert any(p.endswith("stability.png") for p in plots.write_all([a, b], str(tmp_path / "o")))
  paths = plots.write_all([a, longer], str(tmp_path / "o2"))
  assert not any(p.endswith("stability.png") for p in paths)
  assert "(they differ in train.epochs)" in capsys.readouterr().err


def test_titles_name_your_data_by_its_file_not_its_recorded_path():
  assert plots._short("npz:/home/me/data/shapes.npz") == "npz:shapes.npz"
  assert plots._short("folder:/home/me/images/") == "folder:images"
  assert plots._short("tfds:fashion_mnist") == "tfds:fashion_mnist"
  assert plots._short("cifar10") == "cifar10"


def test_curves_of_a_search_where_only_stopped_models_have_curves(tmp_path):
  """Stopped after one epoch, a curve is one point (drawn with a marker); with no fully
  trained model the top panel is empty, without a legend warning."""
  import types
  import warnings
  records = [types.SimpleNamespace(resampled=False, status="stopped", accuracy=0.4,
                                   iteration=i, epsilon=1.0, best_val_accuracy=None,
                                   curves=[{"val_accuracy": [0.3 + 0.01 * i]}])
             for i in range(3)]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert plots.plot_curves(records, str(tmp_path / "c.png"), "stopped only")
  with open(tmp_path / "c.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_an_empty_work_directory_in_the_list_is_the_usage_line():
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "metaqnn.plots", "--workdir=,"], cwd=root,
                       env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True)
  assert out.returncode == 2 and out.stderr.startswith("error: usage:"), out.stderr


def test_one_epoch_curves_are_drawn_and_epochs_are_whole_numbers(tmp_path, monkeypatch):
  """With train.epochs=1 every curve is one point: a line alone would draw nothing."""
  import types
  from matplotlib.figure import Figure
  saved = []
  monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
  records = [types.SimpleNamespace(resampled=False, status="ok", accuracy=0.5 + 0.01 * i,
                                   iteration=i, epsilon=1.0, best_val_accuracy=None,
                                   curves=[{"val_accuracy": [0.5 + 0.01 * i]}])
             for i in range(4)]
  assert plots.plot_curves(records, str(tmp_path / "c.png"), "one epoch")
  top, every = saved[0].axes[:2]
  assert [t.get_text() for t in top.get_legend().get_texts()] == [
      "#4 0.530", "#3 0.520", "#2 0.510", "#1 0.500"]
  # Ranked by a budget objective: the legend names the reward beside the accuracy that
  # the axis shows (it showed the reward alone, on a validation accuracy axis).
  records[0].accuracy, records[0].best_val_accuracy = 0.9, 0.5
  assert plots.plot_curves(records, str(tmp_path / "c.png"), "objective")
  top = saved[1].axes[0]
  assert top.get_legend().get_texts()[0].get_text() == "#1 0.500 (reward 0.900)"
  assert top.get_title().endswith("by reward")
  top = saved[0].axes[0]
  assert len(every.lines) == 4 and all(l.get_marker() == "." for l in every.lines)
  for ax in (top, every):
    assert all(float(t).is_integer() for t in ax.get_xticks()), ax.get_xticks()


def test_epsilon_bars_stand_where_each_epsilon_ran():
  """A schedule reshaped on a resume comes back to epsilon 1, and several workers
  interleave two stages where they meet: each run of one epsilon is drawn where it was
  (the bars were laid end to end per epsilon, under the wrong iterations)."""
  import collections
  R = collections.namedtuple("R", "epsilon accuracy")
  records = ([R(1.0, 0.2)] * 8 + [R(0.5, 0.5)] * 6 + [R(0.1, 0.9)] * 14 + [R(1.0, 0.3)] * 7
             + [R(0.1, 0.8), R(1.0, 0.4)])
  runs = plots.epsilon_runs(records)
  assert [r[:3] for r in runs] == [(1.0, 0, 8), (0.5, 8, 14), (0.1, 14, 28), (1.0, 28, 35),
                                   (0.1, 35, 36), (1.0, 36, 37)]
  assert [r[3] for r in runs] == pytest.approx([0.2, 0.5, 0.9, 0.3, 0.8, 0.4])
  assert plots.epsilon_runs([]) == []


def test_curves_cut_short_are_marked_by_what_cut_them(tmp_path, monkeypatch):
  """Stopped early: dashed, ending in x; stopped by train.max_seconds: dotted, ending in
  +, and both named in the panel's title (a timeout looked fully trained)."""
  import types
  from matplotlib.figure import Figure
  saved = []
  monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
  curve = lambda n: [{"val_accuracy": [0.3 + 0.1 * e for e in range(n)]}]
  records = [types.SimpleNamespace(resampled=False, status=status, accuracy=0.5, iteration=i,
                                   epsilon=1.0, best_val_accuracy=None, curves=curve(n))
             for i, (status, n) in enumerate((("ok", 4), ("stopped", 2), ("timeout", 1)))]
  assert plots.plot_curves(records, str(tmp_path / "c.png"), "cut")
  every = saved[0].axes[1]
  assert [l.get_linestyle() for l in every.lines] == ["-", "--", ":"]
  assert "dashed, ending in x" in every.get_title()
  assert "train.max_seconds: dotted, ending in +" in every.get_title()
  assert [c.get_offsets().tolist() for c in every.collections] == [[[2, 0.4]], [[1, 0.3]]]

"""The search: complete runs, the durable record, resume after any stop, failures."""

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from metaqnn import config_lib
from metaqnn import evaluators
from metaqnn import inspect as inspect_lib
from metaqnn import search
from metaqnn.architecture import FC, Conv, Pool, parse
from metaqnn.errors import UserError
from metaqnn.store import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(schedule="1.0:30,0.5:15,0.1:15", dataset="mnist"):
  config = config_lib.base_config(dataset)
  config.search.schedule = schedule
  config.search.replay_samples = 20
  config.evaluator = "synthetic"
  return config


def records(workdir):
  db = sqlite3.connect(os.path.join(workdir, "metaqnn.db"))
  rows = db.execute("SELECT iteration, arch, accuracy, epsilon, resampled, status "
                    "FROM models ORDER BY iteration").fetchall()
  db.close()
  return rows


def check_record(rows, total_unique):
  assert [r[0] for r in rows] == list(range(len(rows)))
  trained = [r[1] for r in rows if not r[4]]
  assert len(trained) == len(set(trained)) == total_unique  # none trained twice
  first = {}
  for it, arch, acc, eps, resampled, status in rows:
    if resampled:
      assert arch in first and first[arch] == acc  # the stored reward, presented again
    else:
      first[arch] = acc


def test_complete_run_and_inspect(tmp_path):
  config = small_config()
  result = search.run_search(config, str(tmp_path / "w"), log_interval=100)
  assert result.finished and result.unique_models == 60
  rows = records(tmp_path / "w")
  check_record(rows, 60)
  # The epsilon of each model follows the count of unique models before it.
  unique_before = 0
  for _, _, _, eps, resampled, _ in rows:
    assert eps == (1.0 if unique_before < 30 else 0.5 if unique_before < 45 else 0.1)
    unique_before += not resampled
  summary = inspect_lib.summarize(str(tmp_path / "w"))
  assert summary["unique_models"] == 60 and len(summary["models"]) == len(rows)
  assert set(summary["models"][0]) >= {"arch", "accuracy", "epsilon", "iteration",
                                       "status", "resampled"}
  assert summary["schedule"]["finished"]
  # What the agent learned: its walk at epsilon 0 takes a best action at every step.
  greedy = summary["greedy"]
  from metaqnn import store as store_lib
  store = store_lib.open_existing(str(tmp_path / "w"))
  try:
    agent = search.agent_of(str(tmp_path / "w"), store)
  finally:
    store.close()
  path = agent.space.path(greedy["arch"])
  assert greedy["q_values"] == [agent.q[s, a] for s, a in zip(path.states, path.actions)]
  assert all(agent.q[s, a] == agent.q[s].max() for s, a in zip(path.states, path.actions))
  sampled = [r for r in rows if r[1] == greedy["arch"] and not r[4]]
  assert greedy["iteration"] == (sampled[0][0] if sampled else None)
  assert f"the agent's choice now (epsilon 0): {greedy['arch']}" in inspect_lib.render(summary)
  # Running again on a finished search trains nothing more.
  again = search.run_search(config, str(tmp_path / "w"), log_interval=100)
  assert again.finished and records(tmp_path / "w") == rows


def scalars(workdir):
  """TensorBoard's scalars of a search, {(tag, step): value}; a point written twice fails."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  points = {}
  for name in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
    data = open(name, "rb").read()
    while len(data) >= 12:  # TFRecords: length, its CRC, the event, its CRC
      (n,) = struct.unpack("<Q", data[:8])
      if len(data) < 16 + n:
        break  # cut short by a kill: TensorBoard drops it too
      event = event_pb2.Event.FromString(data[12:12 + n])
      data = data[16 + n:]
      for v in event.summary.value:
        assert (v.tag, event.step) not in points, (v.tag, event.step)
        points[(v.tag, event.step)] = v.simple_value
  return points


def test_resume_after_stop_matches_uninterrupted_run(tmp_path):
  config = small_config()
  search.run_search(config, str(tmp_path / "ref"), log_interval=100)
  runs = 1
  while not search.run_search(config, str(tmp_path / "w"), log_interval=100,
                              max_models=11).finished:
    runs += 1
  assert runs > 5
  assert records(tmp_path / "w") == records(tmp_path / "ref")
  # TensorBoard too: the running best and mean carry over a resume
  assert scalars(tmp_path / "w") == scalars(tmp_path / "ref")
  assert len(scalars(tmp_path / "ref")) == 5 * len(records(tmp_path / "ref"))


def test_tensorboard_is_rebuilt_after_a_run_that_did_not_close_it(tmp_path, capsys):
  """A kill -9 loses the scalars not yet flushed (every 30 s); the resume writes them all
  again from the record, in place of what was there, not beside it."""
  config = small_config("1.0:12,0.1:8")
  search.run_search(config, str(tmp_path / "ref"), log_interval=100)
  work = tmp_path / "w"
  search.run_search(config, str(work), log_interval=100, max_models=9)
  os.remove(work / "tensorboard" / "complete.json")  # as a kill leaves it
  for name in os.listdir(work / "tensorboard"):  # and the last scalars lost
    os.truncate(work / "tensorboard" / name, os.path.getsize(work / "tensorboard" / name) // 2)
  capsys.readouterr()
  search.run_search(config, str(work), log_interval=100, max_models=4)
  assert "rebuilding TensorBoard's scalars of the " in capsys.readouterr().out
  search.run_search(config, str(work), log_interval=100)  # closed cleanly: appended to
  assert "rebuilding" not in capsys.readouterr().out
  assert records(work) == records(tmp_path / "ref")
  assert scalars(work) == scalars(tmp_path / "ref")
  os.remove(work / "tensorboard" / "complete.json")  # killed as it closed them, at the end
  assert search.run_search(config, str(work), log_interval=100).already_finished
  assert "rebuilding" in capsys.readouterr().out and scalars(work) == scalars(tmp_path / "ref")
  search.run_search(config, str(work), log_interval=100)
  assert "rebuilding" not in capsys.readouterr().out
  assert len(os.listdir(work / "tensorboard")) == 2  # the rebuilt file: none added since
  # Closed by an earlier version, whose best_accuracy meant another thing: rebuilt too.
  with open(work / "tensorboard" / "complete.json", "w") as f:
    json.dump({"records": len(records(work))}, f)
  search.run_search(config, str(work), log_interval=100)
  assert "rebuilding" in capsys.readouterr().out and scalars(work) == scalars(tmp_path / "ref")


def test_a_stop_between_a_models_scalars_is_rebuilt_on_resume(tmp_path, monkeypatch):
  """A stop is raised between two scalars of one model: that model is not counted as
  written, so the resume writes it again."""
  from metaqnn import progress
  config = small_config("1.0:12,0.1:8")
  search.run_search(config, str(tmp_path / "ref"), log_interval=100)
  scalars_of = progress.Progress._scalars

  def stopped(self, rec, unique_models):
    if rec.iteration == 4:
      self.writer.add_scalar("search/accuracy", rec.accuracy, rec.iteration)
      raise KeyboardInterrupt
    scalars_of(self, rec, unique_models)

  monkeypatch.setattr(progress.Progress, "_scalars", stopped)
  with pytest.raises(KeyboardInterrupt):
    search.run_search(config, str(tmp_path / "w"), log_interval=100)
  monkeypatch.setattr(progress.Progress, "_scalars", scalars_of)
  search.run_search(config, str(tmp_path / "w"), log_interval=100)
  assert scalars(tmp_path / "w") == scalars(tmp_path / "ref")


def test_resume_without_agent_snapshot_replays_the_record(tmp_path):
  config = small_config()
  search.run_search(config, str(tmp_path / "ref"), log_interval=100)
  search.run_search(config, str(tmp_path / "w"), log_interval=100, max_models=25)
  import shutil
  shutil.rmtree(tmp_path / "w" / "agent")  # as if killed before the first snapshot
  search.run_search(config, str(tmp_path / "w"), log_interval=100)
  assert records(tmp_path / "w") == records(tmp_path / "ref")


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from metaqnn import config_lib, evaluators, search
config = config_lib.base_config("mnist")
config.search.schedule = "1.0:40,0.5:20,0.1:20"
config.search.replay_samples = 20
def slow(arch):
    time.sleep(0.02)
    return evaluators.synthetic_accuracy(arch)
search.run_search(config, sys.argv[1], evaluate=slow, log_interval=100)
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tmp_path):
  script = tmp_path / "run.py"
  script.write_text(KILL_SCRIPT.format(root=ROOT))
  ref, work = str(tmp_path / "ref"), str(tmp_path / "w")
  subprocess.run([sys.executable, str(script), ref], check=True, capture_output=True)
  rng = np.random.default_rng(0)
  kills, count = 0, lambda: len(records(work)) if os.path.exists(work + "/metaqnn.db") else 0
  while True:  # kill -9 a few records after each start, at a random moment
    target = count() + int(rng.integers(2, 12))
    proc = subprocess.Popen([sys.executable, str(script), work],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and count() < target:
      time.sleep(0.005)
    time.sleep(float(rng.uniform(0.0, 0.06)))
    if proc.poll() is not None:
      break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
    check_record(records(work), len({r[1] for r in records(work) if not r[4]}))
  assert proc.returncode == 0 and kills >= 5
  assert records(work) == records(ref)
  assert scalars(work) == scalars(ref)  # what each kill lost of TensorBoard, rebuilt


@pytest.mark.slow
def test_inspect_tells_a_running_search_from_one_that_died(tmp_path):
  """What a running search has in flight is not a crash; after a kill -9 it is."""
  script = tmp_path / "run.py"
  script.write_text(KILL_SCRIPT.format(root=ROOT).replace("time.sleep(0.02)", "time.sleep(1.5)"))
  work = str(tmp_path / "w")
  proc = subprocess.Popen([sys.executable, str(script), work],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while (not os.path.exists(work + "/metaqnn.db") or len(records(work)) < 2) and \
        time.time() < deadline:
      time.sleep(0.05)
    live = inspect_lib.summarize(work)
    assert live["running"]["pid"] == proc.pid and live["crashes"] == []
    assert "running now: process" in inspect_lib.render(live)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  dead = inspect_lib.summarize(work)
  assert dead["running"] is None
  assert [c["status"] for c in dead["crashes"]] == ["pending"]
  assert [a["ended"] for a in dead["crashes"][0]["attempts"]] == ["died"]


def test_foreign_and_mismatched_workdirs_are_refused_untouched(tmp_path):
  work = tmp_path / "w"
  search.run_search(small_config(), str(work), log_interval=100, max_models=5)
  before = {p: (work / p).read_bytes() for p in ("metaqnn.db",)}
  for other in (small_config(dataset="svhn"), small_config(dataset="cifar10")):
    with pytest.raises(WorkdirError, match="another search"):
      search.run_search(other, str(work), log_interval=100)
  changed = small_config()
  changed.space.max_depth = 5
  with pytest.raises(WorkdirError, match="space"):
    search.run_search(changed, str(work), log_interval=100)
  assert {p: (work / p).read_bytes() for p in before} == before
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(WorkdirError, match="not empty"):
    search.run_search(small_config(), str(foreign), log_interval=100)
  assert os.listdir(foreign) == ["notes.txt"]
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  (corrupt / "metaqnn.db").write_bytes(b"garbage" * 100)
  with pytest.raises(WorkdirError, match="not an SQLite"):
    search.run_search(small_config(), str(corrupt), log_interval=100)
  assert (corrupt / "metaqnn.db").read_bytes() == b"garbage" * 100


def test_a_search_says_it_starts_only_once_accepted(tmp_path, monkeypatch):
  """`on_start` (a command's first line) comes after every check, never before a
  refusal; a foreign work directory is refused before any data is read."""
  from metaqnn import input_pipeline
  said = []
  work = str(tmp_path / "w")
  say = lambda new, done: said.append((new, done))
  search.run_search(small_config("1.0:5"), work, log_interval=100, on_start=say)
  search.run_search(small_config("1.0:5,0.5:2"), work, log_interval=100, on_start=say)
  search.run_search(small_config("1.0:5,0.5:2"), work, log_interval=100,
                    on_start=say)  # already finished: nothing starts
  assert said == [(True, 0), (False, 5)]
  bad = small_config("1.0:5")
  bad.seed = -1
  with pytest.raises(UserError):
    search.run_search(bad, str(tmp_path / "v"), on_start=say)
  for field in ("batch_size", "eval_batch_size"):  # the trainer's own check comes later
    bad = small_config("1.0:5", dataset="digits")
    bad.evaluator, bad.train[field] = "train", 0
    with pytest.raises(UserError, match=f"config.train.{field}=0 must be >= 1"):
      search.run_search(bad, str(tmp_path / "v"), on_start=say)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  monkeypatch.setattr(input_pipeline, "resolve", lambda config: pytest.fail("data read"))
  with pytest.raises(WorkdirError, match="not empty"):
    search.run_search(small_config(), str(foreign), on_start=say)
  assert said == [(True, 0), (False, 5)] and os.listdir(foreign) == ["notes.txt"]


def test_failures_get_chance_and_the_search_goes_on(tmp_path):
  calls = []

  def flaky(arch):
    calls.append(arch)
    if len(calls) % 3 == 0:
      raise RuntimeError("out of luck")
    if len(calls) % 3 == 1:
      return float("nan")
    return 0.7

  result = search.run_search(small_config("1.0:12"), str(tmp_path / "w"), evaluate=flaky,
                             log_interval=100)
  assert result.finished
  s = inspect_lib.summarize(str(tmp_path / "w"))
  statuses = [m["status"] for m in s["models"] if not m["resampled"]]
  assert statuses.count("error") == 4 and statuses.count("invalid") == 4
  for m in s["models"]:
    if m["status"] != "ok":
      assert m["accuracy"] == pytest.approx(0.1)
  assert any("out of luck" in f["message"] for f in s["failures"])


def test_a_result_an_evaluator_returns_is_checked_like_a_number(tmp_path):
  """A NaN accuracy or an unknown status in a returned Result would be committed, then
  break the agent and every resume; it is a failed candidate instead."""
  from metaqnn.results import Result
  calls = []

  def evaluate(arch):
    calls.append(arch)
    return [Result(accuracy=float("nan")), Result(accuracy=0.6, status="great"),
            Result(accuracy=np.float32(0.7), best_val_accuracy=np.float32(0.7),
                   params=np.int64(10), seconds=np.float32(2))][len(calls) % 3]

  config = small_config("1.0:9")
  search.run_search(config, str(tmp_path / "w"), evaluate=evaluate, log_interval=100)
  statuses = [m["status"] for m in inspect_lib.summarize(str(tmp_path / "w"))["models"]
              if not m["resampled"]]
  assert sorted(statuses) == ["invalid"] * 6 + ["ok"] * 3
  stored = [m for m in inspect_lib.summarize(str(tmp_path / "w"))["models"]
            if m["status"] == "ok"]
  for m in stored:  # NumPy scalars stored as numbers, not as bytes
    assert [type(m[k]) for k in ("accuracy", "best_val_accuracy", "params", "seconds")
            ] == [float, float, int, float], m
  search.run_search(config, str(tmp_path / "w"), evaluate=evaluate, log_interval=100)


@pytest.mark.parametrize("field", [dict(flops=float("inf")), dict(epochs=2.7),
                                   dict(params="many")])
def test_a_result_with_a_count_that_is_not_a_whole_number_is_an_error(field):
  """Evaluators never raise for a candidate: a bad field is a failed candidate."""
  from metaqnn.results import Result
  out = evaluators.Evaluator(lambda arch: Result(accuracy=0.7, **field), 10)(
      parse("[C(8,3,1), SM(10)]"))
  assert out.status == "error" and out.accuracy == pytest.approx(0.1), out
  assert "not a number" in out.message


def hidden_reward(arch):
  """A reward the agent cannot see: 5x5 convolutions early, one pooling, an FC head."""
  score, convs = 0.0, 0
  for i, layer in enumerate(arch.hidden):
    if isinstance(layer, Conv):
      convs += 1
      score += 0.08 if layer.kernel == 5 and i < 4 else 0.0
    if isinstance(layer, Pool):
      score += 0.1
  if any(isinstance(l, FC) for l in arch.hidden):
    score += 0.2
  return min(1.0, 0.1 + score + 0.05 * min(convs, 4))


def test_agent_learns_a_user_reward():
  config = small_config("1.0:300,0.7:100,0.4:100,0.1:150")
  config.search.replay_samples = 100
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    search.run_search(config, d + "/w", evaluate=hidden_reward, log_interval=100,
                      tensorboard=False)
    s = inspect_lib.summarize(d + "/w")
  means = {k: v["mean"] for k, v in s["mean_accuracy_by_epsilon"].items()}
  assert means["0.1"] > means["1"] + 0.1, means


@pytest.mark.slow
def test_main_and_inspect_commands(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  work = str(tmp_path / "w")
  cmd = [sys.executable, "-m", "metaqnn.main", "--config=configs/digits.py",
         f"--workdir={work}", "--config.evaluator=synthetic",
         "--config.search.schedule=1.0:20,0.5:10,0.1:10", "--config.search.replay_samples=5",
         "--config.seed=3"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("starting a digits search in ")
  assert "search finished: 40 unique models" in out.stdout
  assert "[eps 0.1, stage 3/3: 10/10 models | unique 40/40 | sample " in out.stdout
  hint = out.stdout.strip().splitlines()[-1]  # a command that runs as printed
  assert hint.startswith("inspect it with: ")
  ran = subprocess.run(shlex.split(hint.split(": ", 1)[1]), cwd=ROOT, env=env,
                       capture_output=True, text=True)
  assert ran.returncode == 0 and "top 10 fully trained models" in ran.stdout, ran.stderr
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  assert again.returncode == 0 and "already finished" in again.stdout
  # It says what it does: plots (synthetic rewards have no final stage), or nothing.
  assert "Nothing to train; the plots are drawn again\n" in again.stdout, again.stdout
  quiet = subprocess.run(cmd + ["--config.final.plots=False"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
  assert "Nothing to train\n" in quiet.stdout and "plots" not in quiet.stdout, quiet.stdout
  assert sorted(os.listdir(work)) == ["agent", "metaqnn.db", "plots", "tensorboard"]
  js = subprocess.run([sys.executable, "-m", "metaqnn.inspect", f"--workdir={work}", "--json"],
                      cwd=ROOT, env=env, capture_output=True, text=True)
  summary = json.loads(js.stdout)
  assert summary["unique_models"] == 40 and summary["reward_kind"] == "validation accuracy"
  text = subprocess.run([sys.executable, "-m", "metaqnn.inspect", f"--workdir={work}"],
                        cwd=ROOT, env=env, capture_output=True, text=True).stdout
  assert "mean accuracy per epsilon" in text and "top 10 fully trained models" in text
  assert os.listdir(os.path.join(work, "tensorboard"))
  # Another seed on the same work directory is refused with one line and no traceback.
  bad = subprocess.run(cmd[:-1] + ["--config.seed=4"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stdout == ""
  assert bad.stderr.strip().startswith("error:") and "seed" in bad.stderr
  # A new search refused, by a check on the data's description or the executor: only the
  # error, no "starting" line.
  for args, says in ((["--config.budget.max_params=10"], "max_params"),
                     (["--config.executor=bogus"], "unknown executor"),
                     (["--config.parallel=bogus"], "parallel must be"),
                     (["--config.num_workers=-1"], "num_workers")):
    refused = subprocess.run(cmd[:-2] + [f"--workdir={tmp_path / 'new'}"] + args,
                             cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout
    assert len(refused.stderr.splitlines()) == 1 and says in refused.stderr, refused.stderr
  assert not (tmp_path / "new").exists()
  missing = subprocess.run([sys.executable, "-m", "metaqnn.inspect",
                            f"--workdir={tmp_path / 'none'}"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
  assert missing.returncode == 2 and "no metaqnn search" in missing.stderr
  for args, says in ((["--top=-3"], "--top must be >= 1, got -3"),  # was a slice [:-3]
                     (["--split=test"], "give it with --checkpoint=PATH, not --workdir")):
    refused = subprocess.run([sys.executable, "-m", "metaqnn.inspect", f"--workdir={work}",
                              *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout
    assert says in refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_main_stops_cleanly_with_the_shells_status(tmp_path, sig, status):
  """128 + the signal's number, as a shell reports a process that the signal ended."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  work = str(tmp_path / "w")
  proc = subprocess.Popen(
      [sys.executable, "-m", "metaqnn.main", "--config=configs/mnist.py", f"--workdir={work}",
       "--config.evaluator=synthetic", "--config.search.schedule=1.0:100000"],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  while proc.poll() is None and (not os.path.exists(work + "/metaqnn.db")
                                 or len(records(work)) < 20):
    time.sleep(0.05)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == status, err
  assert err.strip().splitlines()[-1] == ("interrupted; the record is saved. Run the same "
                                          "command to resume.")


@pytest.mark.slow
def test_main_stopped_while_loading_is_one_line_that_matches_the_state(tmp_path):
  """(That no record is made is `test_a_stop_dropped_while_the_data_loaded_writes_nothing`.)"""
  env = dict(os.environ, PYTHONPATH=ROOT)
  work = tmp_path / "w"
  proc = subprocess.Popen(
      [sys.executable, "-m", "metaqnn.main", "--config=configs/digits.py", f"--workdir={work}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert "preparing the first one" in proc.stdout.readline()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 143 and "Traceback" not in err, err
  began = (work / "metaqnn.db").exists()  # not unless this process was held up for seconds
  assert err.strip().splitlines() == [
      "interrupted; the record is saved. Run the same command to resume." if began else
      "interrupted before the search began. Run the same command to start it."]


def test_a_stop_dropped_while_the_data_loaded_writes_nothing(tmp_path, dropped_stop):
  """The stop is raised before the work directory is made, not at the search's first
  step: a stopped start leaves no record behind."""
  config = small_config("1.0:5")
  with pytest.raises(KeyboardInterrupt):
    search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  assert not (tmp_path / "w" / "metaqnn.db").exists()


@pytest.mark.usefixtures("default_signal_handlers")
def test_commands_do_not_report_a_dropped_stop(monkeypatch, capsys):
  """Python prints "Exception ignored ... KeyboardInterrupt" when a stop lands in a
  finaliser or an import's callback; from a command's first line that report is left
  out (the stop itself is raised at the next check)."""
  from metaqnn import cli, signals
  monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)

  class Collected:
    def __del__(self):
      signals.handler(signal.SIGTERM, None)  # the stop arrives inside the finaliser

  try:
    cli.handle_stops()
    Collected()
    assert capsys.readouterr().err == ""
    with pytest.raises(KeyboardInterrupt):
      signals.check()
  finally:
    signals._requested.clear()  # pylint: disable=protected-access


@pytest.mark.usefixtures("default_signal_handlers")
def test_a_stop_during_a_tensorboard_write_waits_for_its_end(tmp_path):
  """A stop in the middle of tensorboardX's queue put could leave its writer thread
  asleep, and the search's close then waited for it for ever: the stop is raised after
  the scalar being written (and the model's progress line, written first)."""
  from metaqnn import agent as agent_lib, progress, signals
  from metaqnn.store import ModelRecord
  out = tmp_path / "log"
  prog = progress.Progress(agent_lib.Schedule.parse("1.0:20"), out=open(out, "w"))
  written = []

  class Writer:
    def add_scalar(self, tag, value, step):
      if not written:
        os.kill(os.getpid(), signal.SIGTERM)  # a SIGTERM during the first write
      written.append(tag)

  prog.writer = Writer()
  rec = ModelRecord(arch="[SM(10)]", accuracy=0.5, iteration=0, sample=1, epsilon=1.0,
                    stage=0, curves=[{"val_accuracy": [0.4, 0.5]}])
  signal.signal(signal.SIGTERM, signals.handler)  # the fixture restores the handlers
  try:
    with pytest.raises(KeyboardInterrupt):
      prog.update(rec, unique_models=1)
  finally:
    signals._requested.clear()  # pylint: disable=protected-access
  assert written == ["search/accuracy"] and "sample 1]" in out.read_text()


@pytest.mark.usefixtures("default_signal_handlers")
def test_a_second_stop_ends_a_tensorboard_close_that_hangs(tmp_path):
  """A close that hangs (a flush to a stalled disk) holds the first stop, not the
  second: that one is raised at once, and the first is not raised again."""
  from metaqnn import agent as agent_lib, progress, signals
  prog = progress.Progress(agent_lib.Schedule.parse("1.0:20"), out=open(tmp_path / "l", "w"))
  reached = []

  class Writer:
    def close(self):
      os.kill(os.getpid(), signal.SIGTERM)
      reached.append("held")
      os.kill(os.getpid(), signal.SIGINT)  # the second stop: raised here
      reached.append("after the second")

  prog.writer = Writer()
  signal.signal(signal.SIGTERM, signals.handler)  # the fixture restores the handlers
  signal.signal(signal.SIGINT, signals.handler)
  try:
    with pytest.raises(KeyboardInterrupt):
      prog.close()
  finally:
    signals._requested.clear()  # pylint: disable=protected-access
  assert reached == ["held"] and signal.getsignal(signal.SIGINT) is signals.handler
  assert signals.exit_status() == 130  # the second stop's signal


@pytest.mark.usefixtures("default_signal_handlers")
def test_a_stop_during_tensorboards_close_waits_for_its_end(tmp_path):
  """Closing TensorBoard is a put into its writer thread's queue and a join: a stop in
  the middle is raised once the writer is closed, not halfway."""
  from metaqnn import agent as agent_lib, progress, signals
  prog = progress.Progress(agent_lib.Schedule.parse("1.0:20"), out=open(tmp_path / "l", "w"))
  closed = []

  class Writer:
    def close(self):
      os.kill(os.getpid(), signal.SIGTERM)
      closed.append(True)

  prog.writer = Writer()
  signal.signal(signal.SIGTERM, signals.handler)  # the fixture restores the handlers
  try:
    with pytest.raises(KeyboardInterrupt):
      prog.close()
  finally:
    signals._requested.clear()  # pylint: disable=protected-access
  assert closed == [True]


PLOTS_STOPPED = """
import signal, sys
sys.path.insert(0, {root!r})
from metaqnn import cli, main, plots, signals
def stopped(workdirs):  # as if a SIGTERM came while the plots were drawn
    if {dropped!r}:  # and Python dropped it: only the flag is left
        try:
            signals.handler(signal.SIGTERM, None)
        except KeyboardInterrupt:
            return []
    signal.raise_signal(signal.SIGTERM)
plots.write_all = stopped
sys.argv[0] = "metaqnn.main"
cli.run(main.main)
"""


@pytest.mark.slow
@pytest.mark.parametrize("dropped", [False, True])
def test_a_stop_while_the_plots_are_drawn_is_clean(tmp_path, dropped):
  script = tmp_path / "run.py"
  script.write_text(PLOTS_STOPPED.format(root=ROOT, dropped=dropped))
  out = subprocess.run([sys.executable, str(script), "--config=configs/digits.py",
                        f"--workdir={tmp_path / 'w'}", "--config.evaluator=synthetic",
                        "--config.search.schedule=1.0:5"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 143 and "Traceback" not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      "interrupted while drawing the plots; the search is finished and saved")


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resumes(tmp_path):
  script = tmp_path / "run.py"
  script.write_text(KILL_SCRIPT.format(root=ROOT).replace(
      "search.run_search(", "try:\n    search.run_search(").rstrip() +
      "\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")
  work = str(tmp_path / "w")
  proc = subprocess.Popen([sys.executable, str(script), work])
  while proc.poll() is None and (not os.path.exists(work + "/metaqnn.db")
                                 or len(records(work)) < 3):
    time.sleep(0.01)  # the search is under way
  proc.send_signal(signal.SIGINT)
  assert proc.wait() == 130
  n = len(records(work))
  meta = json.load(open(os.path.join(work, "agent", "agent.json")))
  assert 0 < n and meta["iterations"] == n  # saved on the way out, consistent
  subprocess.run([sys.executable, str(script), work], check=True)
  check_record(records(work), 80)


def test_synthetic_is_deterministic_and_bounded():
  a = parse("[C(64,3,1), P(2,2), C(64,3,1), GAP(10), SM(10)]")
  assert evaluators.synthetic_accuracy(a) == evaluators.synthetic_accuracy(a)
  for text in ("[SM(10)]", "[C(512,5,1), FC(128), FC(128), SM(10)]"):
    assert 0.1 <= evaluators.synthetic_accuracy(parse(text)) <= 0.95


def stage_counts(workdir):
  db = sqlite3.connect(os.path.join(workdir, "metaqnn.db"))
  rows = db.execute("SELECT stage, COUNT(*) FROM models WHERE resampled = 0 "
                    "GROUP BY stage ORDER BY stage").fetchall()
  db.close()
  return [n for _, n in rows]


def test_parallel_workers_count_stages_exactly(tmp_path):
  rng = np.random.default_rng(0)

  def jittery(arch):  # finishes out of order
    time.sleep(float(rng.uniform(0, 0.01)))
    return evaluators.synthetic_accuracy(arch)

  config = small_config("1.0:30,0.5:15,0.1:15")
  config.num_workers = 4
  result = search.run_search(config, str(tmp_path / "w"), evaluate=jittery, log_interval=100)
  assert result.finished and result.unique_models == 60
  check_record(records(tmp_path / "w"), 60)
  assert stage_counts(tmp_path / "w") == [30, 15, 15]


PARALLEL_KILL_SCRIPT = KILL_SCRIPT.replace(
    'config.search.replay_samples = 20', 'config.search.replay_samples = 20\n'
    'config.num_workers = 3')


@pytest.mark.slow
def test_kill_9_with_workers_in_flight_loses_nothing(tmp_path):
  script = tmp_path / "run.py"
  script.write_text(PARALLEL_KILL_SCRIPT.format(root=ROOT))
  work = str(tmp_path / "w")
  count = lambda: len(records(work)) if os.path.exists(work + "/metaqnn.db") else 0
  kills = 0
  rng = np.random.default_rng(1)
  while True:
    target = count() + int(rng.integers(3, 15))
    proc = subprocess.Popen([sys.executable, str(script), work],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and count() < target:
      time.sleep(0.005)
    if proc.poll() is not None:
      break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
  assert proc.returncode == 0 and kills >= 3
  check_record(records(work), 80)
  assert stage_counts(work) == [40, 20, 20]


@pytest.mark.parametrize("where, at", [("update", 205), ("update", 37), ("add_sample", 12),
                                       ("sample", 9)])
def test_ctrl_c_anywhere_in_the_loop_resumes_exactly(tmp_path, monkeypatch, where, at):
  from metaqnn import agent as agent_lib
  from metaqnn import store as store_lib
  config = small_config()
  search.run_search(config, str(tmp_path / "ref"), log_interval=100)
  target = {"update": (agent_lib.Agent, "update"), "sample": (agent_lib.Agent, "sample"),
            "add_sample": (store_lib.Store, "add_sample")}[where]
  original = getattr(*target)
  calls = [0]

  def interrupting(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
      raise KeyboardInterrupt
    return original(self, *args, **kwargs)

  monkeypatch.setattr(*target, interrupting)
  with pytest.raises(KeyboardInterrupt):
    search.run_search(config, str(tmp_path / "w"), log_interval=100)
  monkeypatch.setattr(*target, original)
  search.run_search(config, str(tmp_path / "w"), log_interval=100)
  assert records(tmp_path / "w") == records(tmp_path / "ref")
  ref = json.load(open(tmp_path / "ref" / "agent" / "agent.json"))
  got = json.load(open(tmp_path / "w" / "agent" / "agent.json"))
  assert got["replay"] == ref["replay"] and got["unique_models"] == ref["unique_models"]


@pytest.fixture
def default_signal_handlers():
  """Python's own Ctrl-C and SIGTERM handlers, as in a fresh process (ray.init, in an
  earlier test, installs one for SIGTERM, which a search then leaves alone)."""
  defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
  previous = {sig: signal.signal(sig, handler) for sig, handler in defaults.items()}
  yield
  for sig, handler in previous.items():
    signal.signal(sig, handler)


@pytest.mark.usefixtures("default_signal_handlers")
def test_an_interrupt_that_a_gc_callback_swallowed_still_stops_the_search(tmp_path,
                                                                         monkeypatch):
  """A signal handler's KeyboardInterrupt raised while a garbage-collection callback runs
  (JAX registers one) is dropped by Python; the search must stop anyway, and resume,
  without Python's "Exception ignored" report of the drop."""
  import gc
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  config = small_config("1.0:6,0.1:4")
  plain = evaluators.synthetic_accuracy
  search.run_search(config, str(tmp_path / "ref"), evaluate=plain, log_interval=100)
  calls = []

  def swallowing_callback(phase, info):
    gc.callbacks.remove(swallowing_callback)
    signal.raise_signal(signal.SIGTERM)  # the handler raises here, inside the callback

  def evaluate(arch):
    calls.append(arch)
    if len(calls) == 3:
      gc.callbacks.append(swallowing_callback)
      gc.collect()
    return evaluators.synthetic_accuracy(arch)

  with pytest.raises(KeyboardInterrupt):
    search.run_search(config, str(tmp_path / "w"), evaluate=evaluate, log_interval=100)
  assert len(calls) == 3  # stopped after the model that was training
  assert reported == [] and sys.unraisablehook == reported.append
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  search.run_search(config, str(tmp_path / "w"), evaluate=plain, log_interval=100)
  assert records(tmp_path / "w") == records(tmp_path / "ref")


def test_duplicates_of_an_in_flight_model_do_not_spin(tmp_path):
  def slow(arch):
    time.sleep(0.05)
    return evaluators.synthetic_accuracy(arch)

  config = small_config("1.0:4,0.01:8")  # nearly greedy: re-samples the models in flight
  config.num_workers = 2
  calls = []
  result = search.run_search(config, str(tmp_path / "w"), evaluate=lambda a: calls.append(a)
                             or slow(a), log_interval=100)
  assert result.finished
  check_record(records(tmp_path / "w"), 12)
  assert len(calls) == len(set(map(str, calls))) == 12  # each model evaluated once


@pytest.mark.slow
def test_refused_workdir_is_byte_for_byte_untouched_after_a_kill(tmp_path):
  script = tmp_path / "run.py"
  script.write_text(KILL_SCRIPT.format(root=ROOT))
  work = tmp_path / "w"
  proc = subprocess.Popen([sys.executable, str(script), str(work)])
  while proc.poll() is None and (not (work / "metaqnn.db").exists()
                                 or len(records(work)) < 5):
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  snapshot = lambda: {p.name: p.read_bytes() for p in work.rglob("*") if p.is_file()}
  before = snapshot()
  assert "metaqnn.db-wal" in before  # the killed run left its write-ahead log
  other = small_config("1.0:40,0.5:20,0.1:20")
  other.seed = 7
  with pytest.raises(WorkdirError, match="seed"):
    search.run_search(other, str(work), log_interval=100)
  import gc
  gc.collect()
  assert snapshot() == before


def test_early_stopping_values_are_checked_without_a_rule(tmp_path):
  config = small_config("1.0:12")
  config.early_stop.delta = 2.0  # kind "none": unused, but surely a mistake
  with pytest.raises(UserError, match="early_stop.delta=2.0"):
    search.run_search(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_the_early_stopping_rule_is_part_of_the_search(tmp_path):
  """Its settings set the stopped models' rewards: a resume with others (or with its
  flags left off) is refused in one line that says what the record was made with; a
  record made before the rule was in the fingerprint still resumes."""
  from metaqnn import store as store_lib
  config = small_config("1.0:12")
  assert search.fingerprint(config, "synthetic", 20)["early_stop"] == {"kind": "none"}
  config.early_stop.tau = 0.5  # no rule: its settings do not matter
  assert search.fingerprint(config, "synthetic", 20)["early_stop"] == {"kind": "none"}
  median = small_config("1.0:12")
  median.early_stop.update(kind="median", delta=0.3, reward="last")  # it uses neither
  assert search.fingerprint(median, "train", 20)["early_stop"] == {
      "kind": "median", "tau": 0.25, "min_completed": 20}
  work = str(tmp_path / "w")
  search.run_search(config, work, log_interval=100, tensorboard=False, max_models=5)
  other = small_config("1.0:12")
  other.early_stop.update(kind="predictor", min_completed=5)
  fp = search.fingerprint(other, "synthetic", 20)
  assert fp["early_stop"]["kind"] == "predictor" and fp["early_stop"]["min_completed"] == 5
  with pytest.raises(WorkdirError, match=r"differs in: early_stop; it was made with "
                     r"early_stop kind=none: give those --config.early_stop flags\)"):
    store_lib.Store(work, fp)
  # A predictor's default top (1) is left out of the fingerprint, and named when a resume
  # with another top is refused: giving the flags it names resumes.
  top3 = small_config("1.0:12")
  top3.early_stop.update(kind="predictor", min_completed=5, top=3)
  store_lib.Store(str(tmp_path / "p"), fp).close()
  with pytest.raises(WorkdirError, match=r"differs in: early_stop.top; it was made with "
                     r"early_stop delta=0.05, kind=predictor, min_completed=5, refit_every=10, "
                     r"reward=predicted, tau=0.25, top=1: give those"):
    store_lib.Store(str(tmp_path / "p"), search.fingerprint(top3, "synthetic", 20))
  store_lib.Store(str(tmp_path / "p3"), search.fingerprint(top3, "synthetic", 20)).close()
  with pytest.raises(WorkdirError, match=r"differs in: early_stop.top; it was made with "
                     r"early_stop delta=0.05, kind=predictor, .*tau=0.25, top=3: give those"):
    store_lib.Store(str(tmp_path / "p3"), fp)  # the same rule, its top left off
  # A record from before: its fingerprint has no early_stop entry.
  db = sqlite3.connect(os.path.join(work, store_lib.DB_FILE))
  stored = json.loads(db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()[0])
  del stored["early_stop"]
  with db:
    db.execute("UPDATE meta SET value=? WHERE key='fingerprint'", (json.dumps(stored),))
  db.close()
  assert search.run_search(config, work, log_interval=100, tensorboard=False).finished
  # Such a record resumes under the rule its settings name (none, made before early
  # stopping existed), not under whatever a resume gives.
  train = small_config("1.0:12")
  train.evaluator = "train"
  made = search.fingerprint(train, "train", 20)
  del made["early_stop"]
  store = store_lib.Store(str(tmp_path / "old"), made)
  store.set_meta("config", {k: v for k, v in json.loads(train.to_json()).items()
                            if k != "early_stop"})
  store.close()
  train.early_stop.update(kind="median", min_completed=5)
  with pytest.raises(WorkdirError, match=r"differs in: early_stop; it was made with "
                     r"early_stop kind=none: give those --config.early_stop flags\)"):
    search.run_search(train, str(tmp_path / "old"), tensorboard=False)


def test_one_search_process_per_workdir(tmp_path):
  from metaqnn import store as store_lib
  config = small_config()
  fp = search.fingerprint(config, "synthetic", 20)
  first = store_lib.Store(str(tmp_path / "w"), fp)
  with pytest.raises(WorkdirError, match="this process is already running a search"):
    store_lib.Store(str(tmp_path / "w"), fp)  # a notebook's second call, say
  first.close()
  store_lib.Store(str(tmp_path / "w"), fp).close()
  other = subprocess.Popen(  # another process holds it
      [sys.executable, "-c", "import sys; from metaqnn import store; r = store.lock(sys.argv[1]); "
       "print('held', flush=True); sys.stdin.read()", str(tmp_path / "w")],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, text=True)
  try:
    assert other.stdout.readline() == "held\n"
    with pytest.raises(WorkdirError, match="another metaqnn process is running a search"):
      store_lib.Store(str(tmp_path / "w"), fp)
  finally:
    other.communicate("")


@pytest.mark.slow
def test_missing_data_is_one_line_and_creates_no_workdir(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  work = tmp_path / "w"
  out = subprocess.run([sys.executable, "-m", "metaqnn.main", "--config=configs/mnist.py",
                        f"--workdir={work}", f"--config.dataset.data_dir={tmp_path / 'none'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert "error: mnist" in out.stderr and "BUILD.md" in out.stderr
  assert not work.exists()


def test_one_candidate_per_device_with_real_training(tmp_path):
  import jax
  config = config_lib.base_config("digits")
  config.dataset.val_fraction = 0.2
  config.space.max_depth = 2
  config.space.conv_filters, config.space.conv_kernels = (8, 16), (3,)
  config.space.pools, config.space.fc_units = ((2, 2),), (16,)
  config.space.size_bins, config.space.fc_max_side = (4, 2, 1), 3
  config.search.schedule = "1.0:4"
  config.search.replay_samples = 5
  config.train.epochs, config.train.batch_size, config.train.eval_batch_size = 1, 30, 100
  config.num_workers, config.parallel = 2, "candidate"
  assert len(jax.local_devices()) == 4  # batch 30 only divides over a single device
  result = search.run_search(config, str(tmp_path / "w"), log_interval=100)
  assert result.finished and result.unique_models == 4
  statuses = {m["status"] for m in inspect_lib.summarize(str(tmp_path / "w"))["models"]}
  assert statuses <= {"ok", "no_learning"}, statuses


def test_a_record_made_before_new_fields_opens_and_resumes(tmp_path):
  """Records written before curves, FLOPs, epochs and predictions existed stay usable."""
  workdir = str(tmp_path / "old")
  config = small_config("1.0:20")
  search.run_search(config, workdir, max_models=8, tensorboard=False)
  db = sqlite3.connect(os.path.join(workdir, "metaqnn.db"))
  for column in ("curves", "flops", "epochs", "predicted_accuracy"):
    db.execute(f"ALTER TABLE models DROP COLUMN {column}")
  db.commit()
  db.close()
  summary = inspect_lib.summarize(workdir)  # read-only: no column is added
  assert summary["models"][0]["curves"] == [] and summary["models"][0]["flops"] is None
  result = search.run_search(config, workdir, tensorboard=False)
  assert result.finished and result.unique_models == 20
  models = inspect_lib.summarize(workdir)["models"]
  assert len(models) == result.iterations


def test_compile_cache_dir_keeps_compiled_programs(tmp_path):
  import jax
  from jax._src import compilation_cache  # to leave no cache behind for later tests
  from configs import digits
  config = digits.get_config()
  config.search.schedule, config.train.epochs = "1.0:2", 1
  config.compile_cache_dir = str(tmp_path / "cache")
  before = jax.config.jax_compilation_cache_dir
  try:
    search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    compilation_cache.reset_cache()
  assert os.listdir(tmp_path / "cache")  # the candidates' programs were written there


def test_progress_shows_a_model_under_the_stage_it_was_sampled_in():
  from metaqnn import agent as agent_lib, progress
  from metaqnn.store import ModelRecord
  prog = progress.Progress(agent_lib.Schedule.parse("1.0:20,0.5:10,0.1:10"))
  last_of_stage_1 = ModelRecord(arch="[SM(10)]", accuracy=0.5, iteration=24, sample=24,
                                epsilon=1.0, stage=0)
  line = prog.line(last_of_stage_1, unique_models=20)
  assert line.startswith("[eps 1, stage 1/3: 20/20 models | unique 20/40 | sample 25]"), line
  assert "| ? models/min ETA ? |" in line  # nothing trained in this run yet: no rate, not 0
  # Nor after an over-budget sample (never trained) or a candidate recorded as crashed
  # as the search resumed: each took no time, and made a rate of a thousand a minute.
  # Their rewards are no accuracies, and no fully trained model's: not the best.
  for status in ("over_budget", "crashed"):
    over = ModelRecord(arch="[SM(10)]", accuracy=0.1, iteration=25, sample=25,
                       epsilon=1.0, stage=0, status=status)
    prog.update(over, unique_models=20)
    assert "| ? models/min ETA ? |" in prog.line(last_of_stage_1, unique_models=20)
    assert f"] {'reward' if status == 'over_budget' else 'acc'} 0.1000 ({status}) best - |" \
        in prog.line(over, unique_models=20)
  prog.update(ModelRecord(arch="[SM(10)]", accuracy=0.5, iteration=26, sample=26,
                          epsilon=1.0, stage=0), unique_models=21)
  assert "| ? models/min" not in prog.line(last_of_stage_1, unique_models=21)
  assert "best 0.5000 |" in prog.line(last_of_stage_1, unique_models=21)
  # A failure's line gives its chance reward alone, as the log always did, though its
  # record keeps the accuracy it measured.
  failed = ModelRecord(arch="[SM(10)]", accuracy=0.1, best_val_accuracy=0.1234,
                       iteration=27, sample=27, epsilon=1.0, stage=0, status="no_learning")
  assert "] acc 0.1000 (no_learning) best" in prog.line(failed, unique_models=22)


def test_final_training_says_its_epochs_at_most_every_interval(monkeypatch):
  """A final model can train for hours: the first epoch is said, then at most one line
  per interval, with the time left timed on the epochs after the compile."""
  from metaqnn import progress
  clock = iter([0.0, 20.0, 21.0, 22.0, 51.0, 52.0, 53.0])  # start, then epochs 1-6
  monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
  lines = []
  on_epoch = progress.epoch_lines(lines.append, "final 1/2", 6, every=30.0)
  for epoch in range(1, 7):
    on_epoch({"epoch": epoch, "loss": 1.0 / epoch})
  assert lines == ["final 1/2: epoch 1/6, loss 1.0000 (0m20s with the compile)",
                   "final 1/2: epoch 4/6, loss 0.2500 (0m20s left)"]


def test_a_float32_record_resumes_in_float32_when_precision_is_auto(tmp_path, monkeypatch):
  """On a GPU "auto" means bfloat16; a search recorded in float32 keeps float32."""
  from configs import digits
  from metaqnn import train
  config = digits.get_config()
  config.search.schedule, config.train.epochs = "1.0:2", 1
  workdir = str(tmp_path / "w")
  search.run_search(config, workdir, tensorboard=False, max_models=1)
  monkeypatch.setattr(train.jax, "default_backend", lambda: "gpu")
  assert search.fingerprint(config, "train", 20)["training"]["train"]["precision"] == "bfloat16"
  seen = []
  monkeypatch.setattr(search, "make_executor",
                      lambda c, *a: seen.append(c.train.dtype) or (_ for _ in ()).throw(
                          KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):  # the fingerprint matched: it got to the executor
    search.run_search(config, workdir, tensorboard=False)
  assert seen == ["float32"]


def test_two_workers_train_on_one_shared_copy_of_the_data(tmp_path, monkeypatch):
  """The GPU default: two candidates in flight on the same devices, one device copy."""
  from configs import digits
  from metaqnn import train
  copies = []
  original = train.DeviceData.__init__
  monkeypatch.setattr(train.DeviceData, "__init__",
                      lambda self, *a, **k: copies.append(1) or original(self, *a, **k))
  config = digits.get_config()
  config.search.schedule, config.train.epochs = "1.0:4", 1
  config.num_workers, config.parallel = 2, "data"
  result = search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  assert result.finished and result.unique_models == 4
  assert len(copies) == 1
  models = [m for m in inspect_lib.summarize(str(tmp_path / "w"))["models"]
            if not m["resampled"]]
  assert all(m["curves"] and m["status"] in ("ok", "no_learning") for m in models)


def test_the_guessed_next_candidate_is_the_next_one_at_epsilon_1(tmp_path, monkeypatch):
  """The serial loop hands an evaluator that has `prepare` (the trainer: it compiles the
  guess while the current candidate trains) a guess at the next candidate. At epsilon 1
  sampling ignores rewards, so every guess is right; guesses never change the record."""

  class Preparing:
    def __init__(self):
      self.guesses = []

    def prepare(self, arch):
      self.guesses.append(str(arch))

    def __call__(self, arch):
      return evaluators.synthetic_accuracy(arch)

  config = small_config("1.0:12,0.1:12")
  search.run_search(config, str(tmp_path / "plain"), evaluate=evaluators.synthetic_accuracy,
                    log_interval=100)
  submitted = []
  submit = search.executors.SerialExecutor.submit
  monkeypatch.setattr(search.executors.SerialExecutor, "submit",
                      lambda self, key, arch: (submitted.append(str(arch)),
                                               submit(self, key, arch)))
  evaluate = Preparing()
  search.run_search(config, str(tmp_path / "hinted"), evaluate=evaluate, log_interval=100)
  assert records(tmp_path / "hinted") == records(tmp_path / "plain")
  guesses = evaluate.guesses
  assert len(submitted) == 24 and len(guesses) == 23  # none after the last candidate
  assert guesses[:11] == submitted[1:12]  # epsilon 1: the reward does not matter
  assert sum(g == s for g, s in zip(guesses, submitted[1:])) >= 11


def test_a_workdir_under_a_file_is_named_in_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  (tmp_path / "a.txt").write_text("mine")
  work = tmp_path / "a.txt" / "w"
  out = subprocess.run([sys.executable, "-m", "metaqnn.main", "--config=configs/digits.py",
                        f"--workdir={work}"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 2 and out.stdout == ""  # refused before the search starts
  assert out.stderr.strip().splitlines() == [
      f"error: cannot make {work}: {tmp_path / 'a.txt'} is a file, not a directory"]
  assert (tmp_path / "a.txt").read_text() == "mine"


def test_a_refused_resume_names_the_settings_that_differ(tmp_path):
  """Only what changed, by its dotted path; a budget left off is named with its values."""
  from metaqnn import store as store_lib
  work = str(tmp_path / "w")
  config = small_config("1.0:12")
  config.budget.max_params = 50_000
  store_lib.Store(work, search.fingerprint(config, "train", 20)).close()
  other = small_config("1.0:12", dataset="cifar10")
  other.dataset.image_size, other.dataset.channels = 28, 1  # as mnist, to differ in one thing
  other.budget.max_params = 50_000
  with pytest.raises(WorkdirError, match=r"differs in: dataset; it was made on mnist, not "
                     r"cifar10\)"):
    store_lib.Store(work, search.fingerprint(other, "train", 20))
  longer = small_config("1.0:12")
  longer.train.epochs += 1
  with pytest.raises(WorkdirError, match=r"differs in: budget, training.train.epochs; it was "
                     r"made with budget max_params=50000: give those --config.budget flags"):
    store_lib.Store(work, search.fingerprint(longer, "train", 20))
  # A field changed from its default: its recorded (default) value is named too.
  reward = small_config("1.0:12")
  reward.budget.max_params, reward.budget.over_budget_reward = 50_000, 0.3
  with pytest.raises(WorkdirError, match=r"differs in: budget.over_budget_reward; it was made "
                     r"with budget max_params=50000, over_budget_reward=0.0: give those"):
    store_lib.Store(work, search.fingerprint(reward, "train", 20))


def test_a_resume_with_fewer_stages_finishes_what_a_later_stage_left_pending(tmp_path,
                                                                            capsys):
  """A sample journaled under stage 2 and still pending is evaluated on a resume whose
  schedule has one stage; its progress line says which stage it came from."""
  config = small_config("1.0:4,0.5:4")
  calls = []

  def evaluate(arch):
    calls.append(arch)
    if len(calls) == 6:
      raise KeyboardInterrupt
    return evaluators.synthetic_accuracy(arch)

  with pytest.raises(KeyboardInterrupt):
    search.run_search(config, str(tmp_path / "w"), evaluate=evaluate, log_interval=0)
  config.search.schedule = "1.0:4"
  capsys.readouterr()
  search.run_search(config, str(tmp_path / "w"), evaluate=evaluators.synthetic_accuracy,
                    log_interval=0)
  assert "stage 2 of an earlier schedule" in capsys.readouterr().out
  assert len([r for r in records(tmp_path / "w") if not r[4]]) == 6


def test_data_in_memory_with_the_ray_executor_is_refused(tmp_path):
  """Ray workers would load config.dataset, not the arrays given: refused, not mixed."""
  from metaqnn import input_pipeline
  config = config_lib.base_config("digits")
  config.executor, config.dataset.val_fraction = "ray", 0.2
  dataset = input_pipeline.load(config)
  with pytest.raises(UserError, match="Ray workers load config.dataset"):
    search.run_search(config, str(tmp_path / "w"), dataset=dataset)
  assert not (tmp_path / "w").exists()


def test_data_in_memory_may_bear_any_name(tmp_path):
  """A name no registry knows is the data's own label (the GPU benchmark's "cifar-like")."""
  from metaqnn import input_pipeline
  config = config_lib.base_config("digits")
  config.dataset.val_fraction, config.search.schedule = 0.2, "1.0:2"
  config.evaluator = "synthetic"
  data = input_pipeline.load(config)
  config.dataset.name = "my-arrays"
  result = search.run_search(config, str(tmp_path / "w"), dataset=data, log_interval=100)
  assert result.finished


def test_a_misspelt_config_field_from_python_is_refused(tmp_path):
  """Python's ConfigDicts take any new field; a typo was silently ignored (the command
  line's overrides never are)."""
  config = small_config("1.0:2")
  config.train.epoch = 1
  with pytest.raises(UserError, match=r"unknown config field train.epoch \(did you mean "
                     r"train.epochs\?\)"):
    search.run_search(config, str(tmp_path / "w"), log_interval=100)
  assert not (tmp_path / "w").exists()
  del config.train.epoch
  config.search.schedul, config.evaluater = "1.0:2", "synthetic"
  with pytest.raises(UserError, match="unknown config fields evaluater, search.schedul"):
    search.run_search(config, str(tmp_path / "w"), log_interval=100)


@pytest.mark.parametrize("bad, says", [
    (dict(train_images="floats"), "training images must be a uint8 array [N, H, W, C]"),
    (dict(train_images="grey"), "training images must be a uint8 array [N, H, W, C]"),
    (dict(train_labels="short"), "training labels must be"),
    (dict(train_labels="float"), "training labels must be"),
    (dict(val_labels="twelve"), "validation labels run from 0 to 12; they must be class "
     "indices 0..9"),
    (dict(train_labels="minus"), "training labels run from -1"),
    (dict(num_classes=5), "training labels run from 0 to 9; they must be class indices 0..4"),
    (dict(num_classes=1), "num_classes=1 must be an integer >= 2"),
    (dict(val_images="big"), "validation images are 16x16x1 but training images 8x8x1"),
    (dict(train_images="wide"), "not square"),
    (dict(mean="long"), "mean must be 1 finite numbers"),
    (dict(preprocess="bogus"), "unknown preprocess 'bogus'"),
    ("tuple", "dataset= takes an input_pipeline.Dataset, not a tuple"),
])
def test_bad_data_in_memory_is_refused_before_the_work_directory(tmp_path, bad, says):
  """Arrays given in memory get the checks that read data gets: before, float images,
  labels out of range or splits of other sizes ran to the end with wrong rewards."""
  import dataclasses
  from metaqnn import input_pipeline
  config = config_lib.base_config("digits")
  config.dataset.val_fraction, config.search.schedule = 0.2, "1.0:2"
  good = input_pipeline.load(config)
  make = dict(floats=lambda: good.train_images.astype(np.float32) / 255,
              grey=lambda: good.train_images[..., 0], wide=lambda: good.train_images[:, :, :6],
              short=lambda: good.train_labels[:-1],
              float=lambda: good.train_labels.astype(np.float32),
              minus=lambda: np.where(np.arange(len(good.train_labels)) == 0, -1,
                                     good.train_labels),
              twelve=lambda: np.where(np.arange(len(good.val_labels)) == 0, 12,
                                      good.val_labels),
              big=lambda: np.zeros((len(good.val_labels), 16, 16, 1), np.uint8),
              long=lambda: np.zeros(3, np.float32))
  data = (tuple(dataclasses.astuple(good)) if bad == "tuple" else dataclasses.replace(
      good, **{k: make[v]() if isinstance(v, str) and v in make else v
               for k, v in bad.items()}))
  with pytest.raises(input_pipeline.DatasetError) as e:
    search.run_search(config, str(tmp_path / "w"), dataset=data)
  assert says in str(e.value) and "\n" not in str(e.value) and isinstance(e.value, UserError)
  assert not (tmp_path / "w").exists()


def test_a_record_that_fails_to_open_is_not_left_locked(tmp_path, monkeypatch):
  """A failure after the lock is taken (here: adding a column) releases it at once: a
  notebook's next try in the same process must not find its own stale lock."""
  import sqlite3
  from metaqnn import store as store_lib
  search.run_search(small_config("1.0:3"), str(tmp_path / "w"), log_interval=100)

  def failing(self):
    raise sqlite3.OperationalError("disk I/O error")

  monkeypatch.setattr(store_lib.Store, "_add_missing_columns", failing)
  with pytest.raises(WorkdirError, match="disk I/O error"):
    search.run_search(small_config("1.0:4"), str(tmp_path / "w"), log_interval=100)
  assert not (tmp_path / "w" / store_lib.LOCK_FILE).exists()
  monkeypatch.undo()
  assert search.run_search(small_config("1.0:4"), str(tmp_path / "w"),
                           log_interval=100).finished


def test_a_stop_between_two_finished_candidates_keeps_both(tmp_path, monkeypatch):
  """Two workers finish together; a stop that Python dropped is raised after the first
  result is committed: the other, finished too, is committed on the way out, not trained
  again on resume."""
  import concurrent.futures
  import threading
  from metaqnn import executors, signals
  config = small_config("1.0:10")
  config.num_workers = 2
  calls, lock = [], threading.Lock()
  original = executors.ThreadExecutor.wait

  def wait_for_both(self):  # both finish before the first is taken
    concurrent.futures.wait(list(self._running))
    return original(self)

  monkeypatch.setattr(executors.ThreadExecutor, "wait", wait_for_both)

  def evaluate(arch):
    with lock:
      calls.append(str(arch))
      if len(calls) == 2:
        signals._requested.set()  # a stop that Python dropped: only the flag is left
    return evaluators.synthetic_accuracy(arch)

  try:
    with pytest.raises(KeyboardInterrupt):
      search.run_search(config, str(tmp_path / "w"), evaluate=evaluate, log_interval=100,
                        tensorboard=False)
  finally:
    signals._requested.clear()
  assert len(calls) == 2 and len(records(tmp_path / "w")) == 2
  search.run_search(config, str(tmp_path / "w"), evaluate=evaluate, log_interval=100,
                    tensorboard=False)
  trained = [r for r in records(tmp_path / "w") if not r[4]]
  assert len(calls) == len(trained) == 10  # nothing trained twice


@pytest.mark.slow
def test_a_search_where_no_model_trained_ends_without_an_error(tmp_path):
  """Its final stage has nothing to retrain: skipped with a line, status 0 (a script's
  `main && next` goes on), not an error."""
  out = subprocess.run(
      [sys.executable, "-m", "metaqnn.main", "--config=configs/digits.py",
       f"--workdir={tmp_path / 'w'}", "--config.search.schedule=1.0:1",
       # stopped after its first epoch, as out of time: whatever the numbers (a rate
       # that diverges may not, on every machine)
       "--config.train.epochs=2", "--config.train.max_seconds=1e-9",
       "--config.final.plots=False"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
  assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
  assert "iterations (re-samples included); no model trained successfully" in out.stdout
  assert "final stage skipped: no model of the search trained successfully" in out.stdout


def test_a_damaged_record_is_one_line_and_left_as_it_is(tmp_path):
  """A garbled page inside metaqnn.db (the header intact), a damaged JSON value of its
  meta table, or a table gone: every command says so in one line, exit 2, and the resume
  writes nothing to the record first."""
  work = tmp_path / "w"
  search.run_search(small_config("1.0:40"), str(work), log_interval=100, tensorboard=False)
  good = (work / "metaqnn.db").read_bytes()
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
  pages = bytearray(good)
  pages[3 * 4096:4 * 4096] = bytes(range(256)) * 16
  (work / "metaqnn.db").write_bytes(bytes(pages))
  config = os.path.join(tmp_path, "c.py")
  with open(config, "w") as f:
    f.write("from metaqnn import config_lib\nimport json\n"
            f"def get_config():\n  return config_lib.ml_collections.ConfigDict("
            f"json.loads({small_config('1.0:40').to_json()!r}))\n")
  for command in (["metaqnn.inspect", "--workdir=w"], ["metaqnn.early_stop", "--workdir=w"],
                  ["metaqnn.space", "sample", "--workdir=w"],
                  ["metaqnn.main", f"--config={config}", "--workdir=w"]):
    out = run(*command)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, (command, out.stderr)
    assert "w/metaqnn.db is damaged (SQLite's check: " in out.stderr, out.stderr
  assert (work / "metaqnn.db").read_bytes() == bytes(pages)  # nothing written
  (work / "metaqnn.db").write_bytes(good)
  db = sqlite3.connect(work / "metaqnn.db")
  with db:
    db.execute("UPDATE meta SET value='{bad' WHERE key='config'")
  db.close()
  out = run("metaqnn.inspect", "--workdir=w", "--json")
  assert out.returncode == 2 and out.stderr.splitlines() == [
      "error: w/metaqnn.db: its stored config is damaged (not JSON); restore the work "
      "directory from a copy"], out.stderr
  db = sqlite3.connect(work / "metaqnn.db")
  with db:
    db.execute("DROP TABLE models")
  db.close()
  out = run("metaqnn.inspect", "--workdir=w")
  assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
  assert "metaqnn.db is not a readable metaqnn record (" in out.stderr, out.stderr
  assert "restore it from a copy" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("folder", ["agent", "tensorboard"])
def test_a_file_where_the_search_writes_a_folder_is_refused_at_the_start(tmp_path, folder):
  """Not after training every model left (the agent's snapshot at the end, say)."""
  work = tmp_path / "w"
  search.run_search(small_config("1.0:10"), str(work), log_interval=100, max_models=4)
  shutil.rmtree(work / folder, ignore_errors=True)
  (work / folder).write_text("mine")
  record = (work / "metaqnn.db").read_bytes()
  with pytest.raises(WorkdirError, match=f"w/{folder} is a file, not a folder"):
    search.run_search(small_config("1.0:10"), str(work), log_interval=100,
                      evaluate=lambda arch: pytest.fail("trained"))
  assert (work / "metaqnn.db").read_bytes() == record and (work / folder).read_text() == "mine"


def test_python_callers_mistakes_are_refused_before_anything_is_written(tmp_path):
  """What the commands cannot get wrong but a notebook can: no path, an evaluate that is
  no function of one architecture, a model count below one."""
  work = tmp_path / "w"
  for kwargs, says in (({"evaluate": 5}, "evaluate must be a function of one architecture"),
                       ({"evaluate": lambda: 0.5}, "evaluate must be a function"),
                       ({"max_models": 0}, "max_models must be >= 1"),
                       ({"max_models": -1}, "max_models must be >= 1")):
    with pytest.raises(UserError, match=says):
      search.run_search(small_config("1.0:3"), str(work), **kwargs)
    assert not work.exists()
  with pytest.raises(UserError, match="workdir must be a path"):
    search.run_search(small_config("1.0:3"), "")
  deep = small_config("1.0:3")
  deep.space.max_depth = 1000
  with pytest.raises(UserError, match="space.max_depth=1000 is more than 100"):
    search.run_search(deep, str(work))
  from metaqnn import plots, space
  with pytest.raises(UserError, match="at least one work directory"):
    plots.write_all([])
  with pytest.raises(UserError, match="at least one sample"):
    space.cost_percentiles(lambda: None, (8, 8, 1), 0)


def test_a_space_without_convolutions_is_named_and_still_plotted(tmp_path, capsys):
  """Kernels larger than every side leave only [SM] and [GAP, SM]: a warning says so, and
  the plots of such a search are drawn without matplotlib's own warnings."""
  import warnings
  from metaqnn import plots
  config = small_config("1.0:2", dataset="digits")
  config.space.conv_kernels = (9,)
  search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  err = capsys.readouterr().err
  assert ("warning: no convolution fits this space: every kernel of config.space."
          "conv_kernels (9,) is larger than the image side 8") in err
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert plots.write_all([str(tmp_path / "w")])

"""Candidates that crash or hang, damaged agent snapshots, and searches that cannot end."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from metaqnn import config_lib
from metaqnn import evaluators
from metaqnn import inspect as inspect_lib
from metaqnn import search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def small_config(schedule="1.0:30,0.5:15,0.1:15"):
  config = config_lib.base_config("mnist")
  config.search.schedule = schedule
  config.search.replay_samples = 20
  config.evaluator = "synthetic"
  return config


def query(workdir, sql):
  db = sqlite3.connect(os.path.join(workdir, "metaqnn.db"))
  rows = db.execute(sql).fetchall()
  db.close()
  return rows


def records(workdir):
  return query(workdir, "SELECT iteration, arch, accuracy, epsilon, resampled, status "
                        "FROM models ORDER BY iteration")


# A user function that crashes the whole process on the 5th candidate it is given and on
# every later evaluation of that architecture, in the next processes too (the issue's
# scenario). The calls and the poisoned architecture are kept in files.
CRASH_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from metaqnn import config_lib, evaluators, search
work, how = sys.argv[1], sys.argv[2]
config = config_lib.base_config("mnist")
config.search.schedule = "1.0:30"
config.search.replay_samples = 20
config.num_workers = {workers}
calls, poison = work + ".calls", work + ".poison"
def crash():
    if how == "abort":
        os.abort()
    if how == "segv":
        import ctypes
        ctypes.string_at(0)  # a segmentation fault
    os.kill(os.getpid(), signal.SIGKILL)
def evaluate(arch):
    with open(calls, "a") as f:
        f.write(str(arch) + "\\n")
    lines = open(calls).read().splitlines()
    if len(lines) >= 5 and not os.path.exists(poison):  # the 5th call's, whoever sees it
        try:
            fd = os.open(poison, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, lines[4].encode())
            os.close(fd)
        except FileExistsError:
            pass
    if os.path.exists(poison) and open(poison).read() == str(arch):
        time.sleep(0.05)  # let other workers start
        crash()
    time.sleep(0.01)
    return evaluators.synthetic_accuracy(arch)
search.run_search(config, work, evaluate=evaluate, log_interval=100, tensorboard=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how, workers", [("abort", 1), ("segv", 1), ("sigkill", 1),
                                          ("abort", 2)])
def test_a_candidate_that_crashes_the_process_is_recorded_as_crashed(tmp_path, how, workers):
  script = tmp_path / "run.py"
  script.write_text(CRASH_SCRIPT.format(root=ROOT, workers=workers))
  work = str(tmp_path / "w")
  max_crashes = config_lib.base_config("mnist").search.max_crashes
  runs = []
  for _ in range(max_crashes + 1):
    runs.append(subprocess.run([sys.executable, str(script), work, how], cwd=ROOT, env=ENV,
                               capture_output=True, text=True, timeout=300))
    if runs[-1].returncode == 0:
      break
  poison = open(work + ".poison").read()
  assert [r.returncode != 0 for r in runs] == [True] * max_crashes + [False], \
      [r.returncode for r in runs]
  # Each resume names the architecture in flight and how often it crashed, in one line.
  said = [l for l in runs[1].stderr.splitlines() if poison in l]
  assert len(said) == 1 and "1 crash so far" in said[0], runs[1].stderr
  said = [l for l in runs[-1].stderr.splitlines() if poison in l]
  assert len(said) == 1 and f"{max_crashes} times" in said[0], runs[-1].stderr
  rows = records(work)
  unique = [r for r in rows if not r[4]]
  assert len(unique) == len({r[1] for r in unique}) == 30
  crashed = [r for r in unique if r[1] == poison]
  assert len(crashed) == 1 and crashed[0][5] == "crashed" and crashed[0][2] == 0.1
  assert all(r[5] == "ok" for r in unique if r[1] != poison)  # no innocent casualty
  calls = open(work + ".calls").read().splitlines()
  assert calls.count(poison) == max_crashes  # never evaluated after its last crash
  assert len(set(calls)) == 30 and len(calls) <= 30 + max_crashes + workers
  s = inspect_lib.summarize(work)
  (c,) = s["crashes"]
  assert c["arch"] == poison and c["status"] == "crashed" and "died" in c["message"]
  assert [a["ended"] for a in c["attempts"]] == ["died"] * max_crashes
  assert "crashed models: 1" in inspect_lib.render(s)


STOP_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from metaqnn import config_lib, evaluators, search
config = config_lib.base_config("mnist")
config.search.schedule = "1.0:12"
config.search.replay_samples = 20
def slow(arch):
    time.sleep(0.1)
    return evaluators.synthetic_accuracy(arch)
try:
    search.run_search(config, sys.argv[1], evaluate=slow, log_interval=100)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_clean_stops_never_count_as_a_crash_and_kill_9_counts_once(tmp_path, sig):
  script = tmp_path / "run.py"
  script.write_text(STOP_SCRIPT.format(root=ROOT))
  ref, work = str(tmp_path / "ref"), str(tmp_path / "w")
  subprocess.run([sys.executable, str(script), ref], check=True, capture_output=True)
  proc = subprocess.Popen([sys.executable, str(script), work], stderr=subprocess.PIPE,
                          text=True)
  while proc.poll() is None and (not os.path.exists(work + "/metaqnn.db")
                                 or len(records(work)) < 3):
    time.sleep(0.01)
  time.sleep(0.05)  # inside an evaluation (0.1 s each)
  proc.send_signal(sig)
  proc.communicate()
  assert proc.returncode == (-9 if sig == signal.SIGKILL else 130)
  ended = [e for (e,) in query(work, "SELECT ended FROM attempts")]
  assert ended.count(None) == (1 if sig == signal.SIGKILL else 0), ended
  if sig != signal.SIGKILL:
    assert "interrupted" in ended
  again = subprocess.run([sys.executable, str(script), work], capture_output=True, text=True)
  assert again.returncode == 0, again.stderr
  assert ("1 crash so far" in again.stderr) == (sig == signal.SIGKILL), again.stderr
  assert records(work) == records(ref)  # one kill -9 then resume: exactly as before


@pytest.mark.parametrize("damage", ["truncated json", "garbage npz", "truncated npz",
                                    "missing npz", "ahead of the record",
                                    "another search's", "another search's, as long"])
def test_a_damaged_agent_snapshot_is_rebuilt_from_the_record(tmp_path, capsys, damage):
  config = small_config()
  work, intact = tmp_path / "w", tmp_path / "intact"
  search.run_search(config, str(work), log_interval=100, max_models=25, tensorboard=False)
  shutil.copytree(work, intact)
  agent_dir = work / "agent"
  (npz,) = agent_dir.glob("q-*.npz")
  if damage == "truncated json":
    text = (agent_dir / "agent.json").read_text()
    (agent_dir / "agent.json").write_text(text[:len(text) // 2])
  elif damage == "garbage npz":
    npz.write_bytes(b"\x00garbage" * 50)
  elif damage == "truncated npz":
    npz.write_bytes(npz.read_bytes()[:200])
  elif damage == "missing npz":
    npz.unlink()
  elif damage.startswith("another search's"):  # copied in by hand
    other = small_config()
    other.seed = 7
    search.run_search(other, str(tmp_path / "other"), log_interval=100, max_models=15,
                      tensorboard=False)
    shutil.rmtree(agent_dir)
    shutil.copytree(tmp_path / "other" / "agent", agent_dir)
    if damage.endswith("as long"):  # as many events as the record: nothing to replay
      state = json.loads((agent_dir / "agent.json").read_text())
      state["meta"]["event"] = query(work, "SELECT MAX(e) FROM (SELECT event e FROM samples "
                                     "UNION SELECT event FROM models)")[0][0]
      (agent_dir / "agent.json").write_text(json.dumps(state))
  else:  # the record's last commits lost (a power cut), the snapshot synced before
    db = sqlite3.connect(work / "metaqnn.db")
    (last,) = db.execute("SELECT MAX(event) FROM samples").fetchone()
    with db:
      db.execute("DELETE FROM attempts WHERE sample IN (SELECT id FROM samples WHERE "
                 "event > ?)", (last - 6,))
      db.execute("DELETE FROM models WHERE event > ?", (last - 6,))
      db.execute("DELETE FROM samples WHERE event > ?", (last - 6,))
    db.close()
  damaged = {p.name: p.read_bytes() for p in agent_dir.iterdir()}
  capsys.readouterr()
  search.run_search(config, str(work), log_interval=100, tensorboard=False)
  err = capsys.readouterr().err
  search.run_search(config, str(intact), log_interval=100, tensorboard=False)
  assert records(work) == records(intact)  # the same samples as an undamaged resume
  (aside,) = [p for p in work.iterdir() if p.name.startswith("agent.damaged-")]
  assert {p.name: p.read_bytes() for p in aside.iterdir()} == damaged  # kept, as it was
  lines = [l for l in err.splitlines() if "rebuilding the agent from the record" in l]
  assert len(lines) == 1 and aside.name in lines[0], err
  assert capsys.readouterr().err == ""


def test_the_record_from_before_attempts_were_journaled_still_resumes(tmp_path):
  config = small_config()
  work = str(tmp_path / "w")
  search.run_search(config, work, log_interval=100, max_models=20, tensorboard=False)
  db = sqlite3.connect(os.path.join(work, "metaqnn.db"))
  db.execute("DROP TABLE attempts")
  db.commit()
  db.close()
  assert inspect_lib.summarize(work)["crashes"] == []
  result = search.run_search(config, work, log_interval=100, tensorboard=False)
  assert result.finished and result.unique_models == 60
  assert query(work, "SELECT COUNT(*) FROM attempts")[0][0] > 0


def tiny_training_config(schedule="1.0:2"):
  c = config_lib.base_config("digits")
  c.dataset.val_fraction = 0.2
  c.space.max_depth = 2
  c.space.conv_filters, c.space.conv_kernels = (8,), (3,)
  c.space.pools, c.space.fc_units = ((2, 2),), (16,)
  c.space.size_bins, c.space.fc_max_side = (4, 2, 1), 3
  c.search.schedule, c.search.replay_samples = schedule, 5
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 3, 32, 128
  return c


def test_a_candidate_over_max_seconds_is_a_timeout_and_the_search_goes_on(tmp_path):
  config = tiny_training_config()
  config.train.max_seconds = 1e-6  # every candidate is over it after its first epoch
  result = search.run_search(config, str(tmp_path / "w"), log_interval=100,
                             tensorboard=False)
  assert result.finished and result.unique_models == 2
  models = inspect_lib.summarize(str(tmp_path / "w"))["models"]
  assert [m["status"] for m in models] == ["timeout", "timeout"]
  s = inspect_lib.summarize(str(tmp_path / "w"))
  assert all("max_seconds" in f["message"] and "epoch 1 " in f["message"]
             for f in s["failures"])
  for m in models:  # the reward: the best accuracy it reached (one epoch's)
    assert m["accuracy"] == m["best_val_accuracy"] == m["last_val_accuracy"]


def test_max_seconds_may_be_set_on_resume(tmp_path):
  config = small_config()
  config.evaluator = "train"
  fp = search.fingerprint(config, "train", 20)
  config.train.max_seconds = 600.0
  assert search.fingerprint(config, "train", 20) == fp


def test_the_search_optimizer_is_in_the_fingerprint_only_when_not_adam():
  """Adam (the default) leaves the fingerprint as records made before the search's
  optimizer was a setting (they still resume); SGD and its momentum are in it."""
  config = small_config()
  adam = search.fingerprint(config, "train", 20)["training"]["train"]
  assert "optimizer" not in adam and "momentum" not in adam
  config.train.momentum = 0.5  # (unused by Adam)
  assert search.fingerprint(config, "train", 20)["training"]["train"] == adam
  config.train.optimizer = "sgd"
  sgd = search.fingerprint(config, "train", 20)["training"]["train"]
  assert (sgd["optimizer"], sgd["momentum"]) == ("sgd", 0.5)


def test_a_record_that_stored_adam_resumes_and_sgd_is_named(tmp_path):
  """A record made in Python with train.optimizer="adam" (and a momentum) stored them in
  its fingerprint: it resumes under the default. Another optimizer is named by field."""
  from metaqnn import store as store_lib
  config = small_config()
  fp = search.fingerprint(config, "train", 20)
  old = json.loads(json.dumps(fp))
  old["training"]["train"].update(optimizer="adam", momentum=0.5)
  work = str(tmp_path / "w")
  store_lib.Store(work, old).close()
  store_lib.Store(work, fp).close()  # resumes
  config.train.optimizer = "sgd"
  with pytest.raises(store_lib.WorkdirError, match=r"differs in: training\.train\.momentum, "
                     r"training\.train\.optimizer\)"):
    store_lib.Store(work, search.fingerprint(config, "train", 20))


def test_the_search_optimizer_is_set_from_the_command_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "metaqnn.train_one", "--config=configs/digits.py",
                        "--arch=[SM(10)]", "--config.train.epochs=1",
                        "--config.train.optimizer=sgd", "--config.train.momentum=1.5"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip() == "error: config.train.momentum=1.5 must be in [0, 1) (and finite)"


def run_main(tmp_path, *overrides):
  work = tmp_path / "w"
  out = subprocess.run([sys.executable, "-m", "metaqnn.main", "--config=configs/digits.py",
                        f"--workdir={work}", "--config.evaluator=synthetic", *overrides],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
  return out, work


@pytest.mark.slow
@pytest.mark.parametrize("overrides, says", [
    (["--config.space.max_depth=0"], "holds 2 distinct architectures, but the schedule "
                                     "asks for 126 unique models"),
    (["--config.space.conv_kernels=(9,)"], "holds 2 distinct architectures"),
    (["--config.search.schedule=1.0:0"], "asks for 0 models"),
    (["--config.agent.alpha=2"], "alpha"),
    (["--config.search.max_crashes=0"], "max_crashes"),
    (["--config.seed=-1"], "seed must be in 0..4294967295"),
    # Values beyond any run (typos), which hung, crashed mid-search leaving a work
    # directory, or failed every candidate (found by a fuzz of every field).
    (["--config.seed=4294967296"], "seed must be in 0..4294967295"),
    (["--config.search.replay_samples=1e20"], "search.replay_samples must be in 0..1,000,000"),
    (["--config.num_workers=1e20"], "num_workers must be in 1..4096"),
    (["--config.space.conv_filters=(1e30,)"], "space.conv_filters holds 10000000000000000"),
    (["--config.space.fc_max_side=-1"], "space.fc_max_side must be >= 0"),
    (["--config.budget.objective=params", "--config.budget.target=1000",
      "--config.budget.weight=-1e30"], "must be in [-10, 0)"),
    (["--config.executor=ray", "--config.ray.cpus_per_worker=-1"],
     "ray.cpus_per_worker must be a finite number >= 0"),
    (["--config.evaluator=train", "--config.train.epochs=1e20"], "at most 100,000"),
    (["--config.evaluator=train", "--config.final.epochs=1e20"], "config.final.epochs asks"),
    (["--config.evaluator=train", "--config.final.schedule=0.001:99999999999999999999"],
     "config.final.schedule asks for 99,999,999,999,999,999,999 epochs"),
    (["--config.evaluator=train", "--config.train.lr_decay_every=0"],
     "lr_decay_every=0 must be >= 1"),
    (["--config.train.max_seconds=-1"], "max_seconds"),
    (["--config.final.num_workers=-1"], "final.num_workers"),
    (["--config.evaluator=train", "--config.final.top=0"], "final.top must be >= 1"),
    # The final stage's settings too: training would refuse them only after the search.
    (["--config.evaluator=train", "--config.final.schedule=0.1:10;0.2:5"],
     "bad final.schedule"),
    (["--config.evaluator=train", "--config.final.optimizer=rmsprop"],
     "unknown optimizer 'rmsprop'"),
    (["--config.evaluator=train", "--config.final.dtype=float8"],
     "config.final.dtype='float8' is no precision"),
    (["--config.evaluator=train", "--config.train.dtype=fp16"],
     "config.train.dtype='fp16' is no precision"),
    (["--config.compile_cache_dir=/dev/null"], "compile_cache_dir=/dev/null: File exists"),
    # Rates and optimizer settings out of range: a search of NaNs or of restarts only.
    (["--config.evaluator=train", "--config.train.learning_rate=inf"], "learning_rate=inf"),
    (["--config.evaluator=train", "--config.train.lr_decay=-1"], "lr_decay=-1.0 must be"),
    (["--config.evaluator=train", "--config.train.adam_b1=1.5"], "adam_b1=1.5 must be"),
    (["--config.evaluator=train", "--config.train.restart_threshold=2"],
     "restart_threshold=2.0 must be in [0, 1)"),
    (["--config.evaluator=train", "--config.final.weight_decay=nan"],
     "config.final.weight_decay=nan"),
    (["--config.evaluator=train", "--config.final.learning_rate=inf"], "positive, finite"),
    (["--config.agent.q_init=nan"], "q_init must be a finite number"),
])
def test_a_search_that_cannot_run_is_one_line_and_leaves_nothing(tmp_path, overrides, says):
  out, work = run_main(tmp_path, *overrides)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], out.stderr
  assert not work.exists()


def test_a_stage_that_finds_nothing_new_stops_with_a_clear_message(tmp_path, monkeypatch):
  from metaqnn import search_space
  config = small_config("1.0:5")
  config.space.max_depth = 0  # two architectures, say a budget hides what the count sees
  monkeypatch.setattr(search_space.SearchSpace, "count_architectures", lambda self: 10**6)
  monkeypatch.setattr(search, "MAX_STALL", 200)
  with pytest.raises(search.SearchStalled, match="200 samples in a row without a new"):
    search.run_search(config, str(tmp_path / "w"), log_interval=100, tensorboard=False)
  assert len({r[1] for r in records(tmp_path / "w")}) == 2


def test_every_attempt_is_journaled_and_ended(tmp_path):
  config = small_config("1.0:4")
  calls = []
  result = search.run_search(config, str(tmp_path / "w"), log_interval=100,
                             evaluate=lambda a: calls.append(a) or
                             evaluators.synthetic_accuracy(a), tensorboard=False)
  assert result.finished and len(calls) == 4
  ended = [e for (e,) in query(tmp_path / "w", "SELECT ended FROM attempts")]
  assert ended == ["done"] * 4


def _until_cancelled(started, cancelled):
  """A worker's evaluation that trains for 10 s, checking between 'epochs'; `cancelled`
  is set if its pool's closing stopped it."""
  from metaqnn import signals

  def evaluate(arch):
    started.set()
    try:
      for _ in range(2000):
        signals.check()
        time.sleep(0.005)
    except signals.Cancelled:
      cancelled.set()
      raise
    return evaluators.Result(accuracy=0.5, arch=str(arch))
  return evaluate


def test_a_closed_thread_pool_stops_its_running_candidates():
  """After an error the search closes its executor; Python's exit waits for worker
  threads, so the running candidates must stop, not train on unrecorded."""
  import threading
  from metaqnn import executors
  from metaqnn.architecture import parse
  started, cancelled = threading.Event(), threading.Event()
  pool = executors.ThreadExecutor(lambda i: _until_cancelled(started, cancelled), 1)
  pool.submit(0, parse("[C(8,3,1), SM(10)]"))
  assert started.wait(5)
  pool.close()
  assert cancelled.wait(1)  # at its next check, not after its 10 s


def _done(arch):
  return evaluators.Result(accuracy=0.5, arch=str(arch))


def test_a_thread_pool_hands_over_one_finished_result_at_a_time():
  """Two results that finished together come one per wait(): the search commits each
  before it takes the next, so a stop between them loses neither."""
  from metaqnn import executors
  from metaqnn.architecture import parse
  pool = executors.ThreadExecutor(lambda i: _done, 2)
  pool.submit(0, parse("[C(8,3,1), SM(10)]"))
  pool.submit(1, parse("[C(16,3,1), SM(10)]"))
  while not all(f.done() for f in pool._running):
    time.sleep(0.01)
  assert [key for key, _ in pool.wait()] == [0]
  assert [key for key, _ in pool.wait()] == [1]
  pool.close()


def test_the_final_stage_in_threads_stops_the_others_when_one_fails():
  import threading
  from metaqnn import finalize
  started, cancelled = threading.Event(), threading.Event()
  slow = _until_cancelled(started, cancelled)

  def train_one(rank):
    if rank == 1:
      started.wait(5)
      raise RuntimeError("model 1 failed")
    slow("[SM(10)]")

  still = []
  with pytest.raises(RuntimeError, match="model 1 failed"):
    finalize._in_threads(train_one, [(1,), (2,)], 2, still)
  assert cancelled.wait(1)  # at its next check, not after its 10 s
  assert len(still) == 1  # its pool, for the final stage's lock to wait on


def test_an_unknown_train_optimizer_is_refused_before_the_search(tmp_path):
  """Refused at the start, not recorded as an error for every candidate."""
  from metaqnn import errors
  config = config_lib.base_config("digits")
  config.search.schedule = "1.0:3"
  config.train.optimizer = "rmsprop"
  with pytest.raises(errors.UserError, match="unknown optimizer 'rmsprop'"):
    search.run_search(config, str(tmp_path / "w"), tensorboard=False)
  assert not (tmp_path / "w").exists()


def test_results_kept_on_a_stop_start_nothing_queued():
  """On a stop, finished results are taken without starting a queued candidate (it
  would journal an attempt and train after the stop)."""
  from metaqnn import executors
  from metaqnn.architecture import parse
  started = []
  pool = executors.ThreadExecutor(lambda i: _done, 1)
  pool.on_start = started.append
  pool.submit(0, parse("[C(8,3,1), SM(10)]"))
  pool.submit(1, parse("[C(16,3,1), SM(10)]"))  # queued: one worker
  while not all(f.done() for f in pool._running):
    time.sleep(0.01)
  assert [key for key, _ in pool.finished()] == [0] and started == [0]
  pool.close()


def test_a_stop_while_the_next_candidate_starts_loses_no_result_taken():
  """Starting a queued candidate journals its attempt, where a held-back stop is raised:
  it happens at the next submit or wait, after the search has committed the result taken,
  never between taking it and handing it over."""
  from metaqnn import executors
  from metaqnn.architecture import parse

  def on_start(key):
    if key == 1:
      raise KeyboardInterrupt  # the stop, raised as the queued candidate starts

  pool = executors.ThreadExecutor(lambda i: _done, 1)
  pool.on_start = on_start
  pool.submit(0, parse("[C(8,3,1), SM(10)]"))
  pool.submit(1, parse("[C(16,3,1), SM(10)]"))  # queued: one worker
  while not all(f.done() for f in pool._running):
    time.sleep(0.01)
  try:
    taken = pool.wait()
  except KeyboardInterrupt:
    pytest.fail("the stop came between taking result 0 and handing it over: it is lost")
  assert [key for key, _ in taken] == [0]  # handed over: the search commits it
  with pytest.raises(KeyboardInterrupt):
    pool.wait()
  pool.close()

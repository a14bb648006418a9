"""The search on a local Ray cluster: two workers, and a worker that dies mid-candidate."""

import os
import sqlite3

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray cluster starts for these

from metaqnn import config_lib  # noqa: E402
from metaqnn import evaluators  # noqa: E402
from metaqnn import search  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(tmp_path_factory):
  os.environ["RAY_AUTH_MODE"] = "disabled"
  os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
  home = os.path.expanduser("~")
  before = set(os.listdir(home)) if os.path.isdir(home) else set()
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
           _temp_dir=str(tmp_path_factory.mktemp("ray")))
  yield
  ray.shutdown()
  after = set(os.listdir(home)) if os.path.isdir(home) else set()
  assert after - before <= {".cache"}, f"Ray wrote into $HOME: {after - before}"


def config(schedule="1.0:16,0.5:8,0.1:8"):
  c = config_lib.base_config("mnist")
  c.search.schedule = schedule
  c.search.replay_samples = 10
  c.evaluator = "synthetic"
  c.executor = "ray"
  c.num_workers = 2
  return c


def rows(workdir):
  db = sqlite3.connect(os.path.join(workdir, "metaqnn.db"))
  out = db.execute("SELECT arch, stage, resampled, status FROM models").fetchall()
  db.close()
  return out


def test_two_workers_complete_with_exact_counts(tmp_path):
  result = search.run_search(config(), str(tmp_path / "w"), log_interval=100)
  assert result.finished and result.unique_models == 32
  trained = [r for r in rows(tmp_path / "w") if not r[2]]
  assert len(trained) == len({r[0] for r in trained}) == 32  # none trained twice
  assert [sum(r[1] == s for r in trained) for s in range(3)] == [16, 8, 8]


def test_results_kept_on_a_stop_are_all_taken_and_start_nothing_queued():
  """On a stop the search commits every result that finished beside the last one taken
  (`finished`), and no queued candidate starts in their place."""
  from metaqnn.architecture import parse
  from metaqnn.ray_executor import RayExecutor
  pool = RayExecutor(config())
  started = []
  pool.on_start = started.append
  for key, arch in enumerate(["[C(8,3,1), SM(10)]", "[C(16,3,1), SM(10)]", "[SM(10)]"]):
    pool.submit(key, parse(arch))  # the third waits for a worker
  ray.wait(list(pool._running), num_returns=2, timeout=60)
  try:
    assert [key for key, _ in pool.finished()] == [0, 1] and started == [0, 1]
    assert pool.finished() == []
  finally:
    pool.close()


def test_a_dying_worker_loses_nothing(tmp_path):
  marker = tmp_path / "died"

  def dies_once(arch):  # runs in a Ray worker: kill that worker the first time
    if not marker.exists():
      marker.write_text("x")
      os._exit(1)
    return evaluators.synthetic_accuracy(arch)

  result = search.run_search(config("1.0:12"), str(tmp_path / "w"), evaluate=dies_once,
                             log_interval=100)
  assert marker.exists() and result.finished and result.unique_models == 12
  trained = [r for r in rows(tmp_path / "w") if not r[2]]
  assert len({r[0] for r in trained}) == 12 and all(r[3] == "ok" for r in trained)


def test_ray_workers_train_real_candidates(tmp_path):
  c = config("1.0:4")
  c.dataset.name, c.dataset.image_size, c.dataset.channels = "digits", 8, 1
  c.dataset.val_fraction = 0.2
  c.space.max_depth = 2
  c.space.conv_filters, c.space.conv_kernels = (8,), (3,)
  c.space.pools, c.space.fc_units = ((2, 2),), (16,)
  c.space.size_bins, c.space.fc_max_side = (4, 2, 1), 3
  c.evaluator = "train"
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 1, 32, 128
  result = search.run_search(c, str(tmp_path / "w"), log_interval=100)
  assert result.finished and result.unique_models == 4
  trained = [r for r in rows(tmp_path / "w") if not r[2]]
  assert all(r[3] in ("ok", "no_learning") for r in trained), trained


RAY_DRIVER = """
import os, sys, time
sys.path.insert(0, {root!r})
os.environ["RAY_AUTH_MODE"] = "disabled"
from metaqnn import config_lib, evaluators, search
c = config_lib.base_config("mnist")
c.search.schedule, c.search.replay_samples = "1.0:16,0.5:8", 10
c.executor, c.num_workers = "ray", 2
c.ray.address = {address!r}
def slow(arch):
    time.sleep(0.2)
    return evaluators.synthetic_accuracy(arch)
search.run_search(c, sys.argv[1], evaluate=slow, log_interval=100)
"""


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_driver_resumes_with_nothing_lost(tmp_path, sig):
  """kill -9, or SIGTERM, which stops the driver as cleanly as Ctrl-C (ray.init's own
  handler would make it exit with status 15 instead)."""
  import signal
  import subprocess
  import sys
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  address = ray.get_runtime_context().gcs_address  # the drivers join this test's cluster
  script = tmp_path / "driver.py"
  script.write_text(RAY_DRIVER.format(root=root, address=address))
  work = str(tmp_path / "w")
  count = lambda: len(rows(work)) if os.path.exists(work + "/metaqnn.db") else 0
  err = tmp_path / "stderr"
  with open(err, "w") as f:
    proc = subprocess.Popen([sys.executable, str(script), work], stderr=f)
  deadline = time.time() + 120
  while proc.poll() is None and count() < 6 and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the driver ended before it could be killed"
  proc.send_signal(getattr(signal, sig))
  status = proc.wait()
  if sig == "SIGTERM":  # an uncaught KeyboardInterrupt (the driver has no handler for it)
    assert status != 15 and err.read_text().rstrip().endswith("KeyboardInterrupt")
  subprocess.run([sys.executable, str(script), work], check=True, timeout=300)
  trained = [r for r in rows(work) if not r[2]]
  assert len(trained) == len({r[0] for r in trained}) == 24
  assert [sum(r[1] == s for r in trained) for s in range(2)] == [16, 8]


def poisoned(tmp_path, crash):
  """A user function that calls `crash()` on the 3rd architecture it is given, and on
  every later evaluation of it, in whichever worker (the calls are kept in files)."""
  calls, poison = str(tmp_path / "calls"), str(tmp_path / "poison")

  def evaluate(arch):
    with open(calls, "a") as f:
      f.write(str(arch) + "\n")
    lines = open(calls).read().splitlines()
    if len(lines) >= 3 and not os.path.exists(poison):
      try:
        fd = os.open(poison, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, lines[2].encode())
        os.close(fd)
      except FileExistsError:
        pass
    if os.path.exists(poison) and open(poison).read() == str(arch):
      crash()
    return evaluators.synthetic_accuracy(arch)

  return evaluate, calls, poison


@pytest.mark.parametrize("how", ["abort", "hang"])
def test_a_crashing_or_hanging_candidate_costs_only_itself(tmp_path, how):
  import time
  crash = os.abort if how == "abort" else lambda: time.sleep(3600)
  evaluate, calls, poison = poisoned(tmp_path, crash)
  c = config("1.0:12")
  c.ray.worker_timeout = 5.0  # a hung worker is killed after this
  result = search.run_search(c, str(tmp_path / "w"), evaluate=evaluate, log_interval=100)
  assert result.finished and result.unique_models == 12  # one run, nobody resumed it
  bad = open(poison).read()
  trained = [r for r in rows(tmp_path / "w") if not r[2]]
  assert len({r[0] for r in trained}) == 12
  assert [r[3] for r in trained if r[0] == bad] == ["lost"]
  assert all(r[3] == "ok" for r in trained if r[0] != bad)
  assert open(calls).read().splitlines().count(bad) == c.search.max_crashes
  db = sqlite3.connect(os.path.join(tmp_path / "w", "metaqnn.db"))
  (message,) = db.execute("SELECT message FROM models WHERE arch = ?", (bad,)).fetchone()
  db.close()
  assert f"crashed {c.search.max_crashes} times" in message
  assert ("worker_timeout" in message) == (how == "hang"), message


def test_data_in_memory_goes_with_a_function_that_needs_none(tmp_path):
  """Data in memory is refused with Ray only when workers train on it: a user's function
  gets architectures, and the data only shapes the search space (8x8 digits here)."""
  from metaqnn import input_pipeline
  c = config_lib.base_config("digits")
  c.dataset.val_fraction, c.executor, c.num_workers = 0.2, "ray", 2
  c.search.schedule, c.search.replay_samples = "1.0:6", 5
  dataset = input_pipeline.load(c)
  c.dataset.name = "mnist"  # not what the space is built for: the data in memory decides
  result = search.run_search(c, str(tmp_path / "w"), evaluate=evaluators.synthetic_accuracy,
                             dataset=dataset, log_interval=100)
  assert result.finished and result.unique_models == 6
  assert search.store_lib.stored_fingerprint(str(tmp_path / "w"))["space"]["image_size"] == 8

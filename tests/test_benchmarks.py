"""The GPU search benchmark's CPU mode runs end to end and reports every part."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_search_benchmark_small_mode(tmp_path):
  env = dict(os.environ, XLA_FLAGS="")  # one CPU device, as a user's machine
  proc = subprocess.run([sys.executable, "benchmarks/gpu_search.py", "--small", "--notorch",
                         f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(l) for l in open(tmp_path / "gpu_search.jsonl")]
  kinds = [r["kind"] for r in rows]
  assert {"machine", "net", "quantile", "search", "estimate"} <= set(kinds)
  net = next(r for r in rows if r["kind"] == "net")
  assert net["jax"]["float32"]["images_per_s"] > 0 and net["jax"]["bfloat16"]["images_per_s"] > 0
  search = next(r for r in rows if r["kind"] == "search")
  assert search["models"] == 3 and 0 < search["busy"] <= 1
  # One line per candidate as the search goes, so that a search cut short leaves figures.
  done = [r for r in rows if r["kind"] == "candidate"]
  assert [r["n"] for r in done] == [1, 2, 3]
  assert done[-1]["device_s"] <= search["device_s"] + 1e-6 <= search["seconds"]
  estimate = next(r for r in rows if r["kind"] == "estimate")
  assert 0 < estimate["train_hours"] <= estimate["sequential_hours"]
  # Pipelined, no mode is slower than compiling on the critical path or faster than the
  # device work alone.
  for mode in ("in_flight_hours", "alt_hours"):
    assert estimate["train_hours"] <= estimate[mode] <= estimate["sequential_hours"]
  # The estimate again from the recorded lines, measuring nothing (another machine's file).
  again = tmp_path / "again"
  proc = subprocess.run([sys.executable, "benchmarks/gpu_search.py", "--space_samples=200",
                         f"--estimate_from={tmp_path / 'gpu_search.jsonl'}", f"--out={again}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  kinds = [json.loads(l)["kind"] for l in open(again / "gpu_search.jsonl")]
  assert kinds == ["estimate"]


def test_cifar_like_data_is_learnable_shaped_and_stored_as_uint8():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import gpu_search
  ds = gpu_search.cifar_like(300, 100)
  assert ds.train_images.shape == (300, 32, 32, 3) and ds.train_images.dtype == "uint8"
  assert ds.val_images.shape == (100, 32, 32, 3)
  assert set(ds.train_labels) == set(range(10))
  # The classes differ on average: per-class mean images are not all alike.
  means = [ds.train_images[ds.train_labels == k].mean() for k in range(10)]
  assert max(means) - min(means) > 1.0


@pytest.mark.slow
def test_budget_benchmark_reports_shares_and_the_final_policy():
  proc = subprocess.run([sys.executable, "benchmarks/budget_digits.py", "--q=80", "--seeds=0",
                         "--schedule=1.0:10,0.1:5"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [l.split() for l in proc.stdout.splitlines() if l.strip().startswith(("False", "True"))]
  assert [r[0] for r in rows] == ["False", "True"]
  for r in rows:
    assert r[5].startswith("(") and r[6] == "0"  # no over-budget model trained
    policy = [float(v.rstrip("%")) for v in (r[8], r[10])]
    assert all(0.0 <= v <= 100.0 for v in policy)
  assert rows[1][8:11] == ["0.0%", "/", "0.0%"]  # pruned: no walk of the agent is over


def test_new_shapes_marks_models_with_a_convolution_not_seen_before():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import gpu_search
  from metaqnn.architecture import parse
  a = parse("[C(64,3,1), P(2,2), C(128,3,1), SM(10)]")
  b = parse("[C(64,3,1), SM(10)]")  # its one convolution is a's first
  c = parse("[P(2,2), C(64,3,1), SM(10)]")  # the same layer on a smaller side: new
  assert gpu_search.new_shapes([a, b, a, c, parse("[SM(10)]")]).tolist() == [
      True, False, False, True, False]


def test_budget_pool_reports_the_best_in_budget_model_per_seed(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import budget_digits
  from configs import digits
  from metaqnn import store as store_lib
  workdirs = []
  for seed in (0, 0, 1):
    config = digits.get_config()
    config.evaluator = "synthetic"
    config.seed = seed
    config.search.schedule = "1.0:12"
    workdirs.append(str(tmp_path / f"w{len(workdirs)}"))
    budget_digits.run(config, workdirs[-1])
  models = {}
  for w in workdirs[:2]:  # seed 0's two searches, pooled
    store = store_lib.open_existing(w)
    models.update({r.arch: (r.best_val_accuracy, r.params) for r in store.models()
                   if r.status == "ok" and not r.resampled})
    store.close()
  cap = sorted(p for _, p in models.values())[len(models) // 2]
  fit = max(a for a, p in models.values() if p <= cap)
  other = str(tmp_path / "other")
  config = digits.get_config()
  config.evaluator, config.search.schedule, config.train.epochs = "synthetic", "1.0:5", 4
  budget_digits.run(config, other)  # not comparable: another schedule of training
  out = io.StringIO()
  with contextlib.redirect_stdout(out):  # not capsys: searches' log handlers outlive it
    budget_digits.pool_ceiling(workdirs + [other], cap, epochs=8)
  out = out.getvalue()
  assert f"skipped {other}" in out
  seed0 = next(l for l in out.splitlines() if l.strip().startswith("seed 0:"))
  assert "2 searches" in seed0 and f"best {max(a for a, _ in models.values()):.4f}" in seed0
  assert f"within budget, best {fit:.4f}" in seed0
  assert any(l.strip().startswith("seed 1: 1 searches") for l in out.splitlines())


@pytest.mark.parametrize("pool, says", [
    ("{missing}", "holds no metaqnn search"),
    (",", "separated by commas"),
    ("", "separated by commas"),
    ("{other}", "none of the 1 work directories is a digits search"),
])
def test_budget_pool_refuses_what_it_cannot_compare_in_one_line(tmp_path, pool, says):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import budget_digits
  from configs import digits
  other = str(tmp_path / "other")
  if "{other}" in pool:
    config = digits.get_config()
    config.evaluator, config.search.schedule, config.train.epochs = "synthetic", "1.0:3", 4
    budget_digits.run(config, other)
  pool = pool.format(missing=str(tmp_path / "missing"), other=other)
  proc = subprocess.run([sys.executable, "benchmarks/budget_digits.py", "--q=60",
                         f"--pool={pool}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert says in proc.stderr.strip().splitlines()[-1]


def test_harder_digits_writes_the_same_images_as_npz_and_folder(tmp_path):
  """The untuned data set of BENCHMARKS.md's acceptance runs: both forms, one task, and
  no digit behind a validation or test image is behind a training image."""
  from PIL import Image
  import benchmarks.harder_digits as hd  # (the folder is on sys.path: conftest)
  proc = subprocess.run([sys.executable, "benchmarks/harder_digits.py", f"--out={tmp_path}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  arrays = np.load(tmp_path / "harder_digits.npz")
  assert {k: arrays[k].shape[0] for k in ("x_train", "x_val", "x_test")} == {
      "x_train": 1400, "x_val": 400, "x_test": 400}
  assert sorted(set(arrays["y_train"].tolist())) == list(range(10))
  assert sum(len(files) for _, _, files in os.walk(tmp_path / "folder")) == 2200
  first = tmp_path / "folder" / "test" / hd.NAMES[arrays["y_test"][0]] / "test_00000.png"
  assert (np.asarray(Image.open(first)) == arrays["x_test"][0]).all()
  splits = hd.make()
  assert (splits["test"][0] == arrays["x_test"]).all()
  sources = {split: set(picks.tolist()) for split, (_, _, picks) in splits.items()}
  assert not sources["train"] & (sources["val"] | sources["test"])
  assert not sources["val"] & sources["test"]


def test_shapes_writes_an_npz_and_a_folder_of_mixed_sizes(tmp_path):
  """The RGB data set of BENCHMARKS.md's acceptance runs: balanced classes, and a folder
  whose images come in three sizes (a search of it must resize)."""
  from PIL import Image
  arrays = _generated("shapes", tmp_path, train=1000, test=300, classes=5)
  folder = tmp_path / "shapes_folder"
  sizes = {Image.open(folder / c / f).size for c in os.listdir(folder)
           for f in os.listdir(folder / c)}
  assert sizes == {(20, 20), (24, 24), (18, 18)}
  i = min(int(f[:-4]) for f in os.listdir(folder / "circle") if int(f[:-4]) % 3 == 0)
  same = np.asarray(Image.open(folder / "circle" / f"{i:05d}.png"))
  assert (same == arrays["x_train"][i]).all()  # the 20x20 ones are the npz's own


def test_stripes_writes_an_npz_and_train_test_folders_of_two_sizes(tmp_path):
  """The third RGB data set of BENCHMARKS.md: balanced classes, the folder's splits in
  two sizes (a search of it must resize), its 20x20 images the npz's own."""
  from PIL import Image
  arrays = _generated("stripes", tmp_path, train=800, test=200, classes=4)
  for split, n in (("train", 800), ("test", 200)):
    folder = tmp_path / "stripes_folder" / split
    files = [(c, f) for c in os.listdir(folder) for f in os.listdir(folder / c)]
    assert len(files) == n
    assert {Image.open(folder / c / f).size for c, f in files} == {(20, 20), (24, 24)}
  c, f = next((c, f) for c, f in files if int(f[:-4]) % 3)
  assert (np.asarray(Image.open(folder / c / f)) == arrays["x_test"][int(f[:-4])]).all()


def _generated(name: str, out, train: int, test: int, classes: int):
  """The arrays `benchmarks/<name>.py --out=OUT` writes: 20x20 RGB uint8, balanced."""
  proc = subprocess.run([sys.executable, f"benchmarks/{name}.py", f"--out={out}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  arrays = np.load(out / f"{name}.npz")
  assert arrays["x_train"].shape == (train, 20, 20, 3) and len(arrays["x_test"]) == test
  assert arrays["x_train"].dtype == np.uint8
  assert np.bincount(arrays["y_train"]).tolist() == [train // classes] * classes
  return arrays

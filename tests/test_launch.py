"""The launch scripts run their documented commands (tiny synthetic searches)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.evaluator=synthetic", "--config.search.schedule=1.0:6,0.1:4",
        "--config.search.replay_samples=5"]


def launch(script, *args, dry=False, cwd=ROOT):
  env = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1" if dry else "0")
  env.pop("PYTHONPATH", None)  # the scripts find the package themselves
  return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=cwd,
                        env=env, capture_output=True, text=True)


def test_usage_without_arguments():
  for script in ("one_machine.sh", "ray_cluster.sh", "sweep_seeds.sh",
                 "stability_study.sh", "all_datasets.sh"):
    out = launch(script)
    assert out.returncode == 2 and "Usage:" in out.stderr and "Example:" in out.stderr


@pytest.mark.slow
def test_sweep_seeds_runs_searches_and_the_stability_plot(tmp_path):
  out = launch("sweep_seeds.sh", "configs/digits.py", str(tmp_path), "2", *TINY)
  assert out.returncode == 0, out.stderr
  for seed in (0, 1):
    assert os.path.exists(tmp_path / f"seed{seed}" / "metaqnn.db")
  assert os.path.exists(tmp_path / "plots" / "stability.png")


@pytest.mark.slow
def test_one_machine_runs_a_search(tmp_path):
  out = launch("one_machine.sh", "configs/digits.py", str(tmp_path / "w"), "candidate", *TINY)
  assert out.returncode == 0, out.stderr
  assert "search finished: 10 unique models" in out.stdout


@pytest.mark.slow
def test_paths_are_those_of_the_folder_it_is_run_from(tmp_path):
  """Work directories and your own config files are relative to where you are; the
  repository's configs are found from anywhere."""
  import shutil
  shutil.copy(os.path.join(ROOT, "configs", "digits.py"), tmp_path / "mine.py")
  out = launch("one_machine.sh", "mine.py", "w", "candidate", *TINY, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  assert (tmp_path / "w" / "metaqnn.db").exists() and not os.path.exists(
      os.path.join(ROOT, "w"))
  dry = launch("sweep_seeds.sh", "configs/mnist.py", "runs/x", "1", dry=True, cwd=tmp_path)
  assert f"--config={ROOT}/configs/mnist.py" in dry.stdout and "--workdir=runs/x/seed0" in \
      dry.stdout
  dry = launch("one_machine.sh", "configs/custom.py:folder:/data/imgs", "w", dry=True,
               cwd=tmp_path)  # a config's argument after the file
  assert f"--config={ROOT}/configs/custom.py:folder:/data/imgs" in dry.stdout


def test_dry_runs_show_the_commands(tmp_path):
  out = launch("ray_cluster.sh", "search", "configs/cifar10.py", "runs/c10", "10", dry=True)
  assert "--config.executor=ray" in out.stdout and "--config.num_workers=10" in out.stdout
  out = launch("stability_study.sh", str(tmp_path), "3", dry=True)
  assert out.stdout.count("metaqnn.main") == 3
  assert "train_fraction=0.1" in out.stdout and "1.0:1000" in out.stdout
  assert out.stdout.count("--config.final.run_after_search=False") == 3  # searches only
  out = launch("all_datasets.sh", str(tmp_path), dry=True)
  assert all(f"configs/{n}.py" in out.stdout for n in ("mnist", "svhn", "cifar10", "cifar100"))


@pytest.mark.parametrize("script, args, count", [
    ("sweep_seeds.sh", ["configs/mnist.py", "runs/x", "ten"], "SEEDS"),
    ("sweep_seeds.sh", ["configs/mnist.py", "runs/x", "0"], "SEEDS"),
    ("stability_study.sh", ["runs/x", "-2"], "RUNS"),  # its own check, not sweep_seeds'
    ("ray_cluster.sh", ["search", "configs/cifar10.py", "runs/x", "ten"], "WORKERS")])
def test_a_bad_count_is_one_line(script, args, count):
  out = launch(script, *args, dry=True)
  assert out.returncode == 2 and out.stdout == "", out
  assert out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1, out.stderr
  assert out.stderr.startswith(f"error: {count} must be"), out.stderr


def test_one_machine_leaves_the_worker_count_to_auto():
  """Auto keeps two candidates per device group on GPUs (one compiles while the other
  trains); an explicit count still passes through."""
  out = launch("one_machine.sh", "configs/cifar10.py", "runs/c10", dry=True)
  assert "--config.parallel=data" in out.stdout and "num_workers" not in out.stdout
  out = launch("one_machine.sh", "configs/cifar10.py", "runs/c10", "candidate",
               "--config.num_workers=3", dry=True)
  assert "--config.num_workers=3" in out.stdout


def test_sweep_plots_every_seed_of_an_outdir_with_commas_and_quotes(tmp_path):
  """The stability plot's --workdir is a comma-separated list: an OUTDIR holding a comma
  (or a double quote) still names each seed's folder once."""
  import shlex
  from absl import flags
  out_dir = str(tmp_path / 'runs, "v2"')
  dry = launch("sweep_seeds.sh", "configs/mnist.py", out_dir, "2", dry=True)
  assert dry.returncode == 0, dry.stderr
  plots = shlex.split([l for l in dry.stdout.splitlines() if "metaqnn.plots" in l][0])
  value = [a for a in plots if a.startswith("--workdir=")][0][len("--workdir="):]
  assert flags.ListParser().parse(value) == [f"{out_dir}/seed0", f"{out_dir}/seed1"]


def test_a_python_without_the_dependencies_is_one_line(tmp_path):
  """No .venv and a system python3 without absl: said in one line, not a traceback."""
  bare = tmp_path / "python"
  bare.write_text("#!/bin/sh\nexit 1\n")  # imports nothing
  bare.chmod(0o755)
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "sweep_seeds.sh"),
                        "configs/digits.py", str(tmp_path / "o"), "1"], cwd=tmp_path,
                       env=dict(os.environ, PYTHON=str(bare), DRY_RUN="0"),
                       capture_output=True, text=True)
  assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
  assert "cannot import metaqnn's dependencies" in out.stderr and "PYTHON=" in out.stderr
  assert not (tmp_path / "o").exists()

"""The state space of SPEC section 2: every transition rule, enumeration, round trips."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from metaqnn.errors import UserError

from metaqnn import agent as agent_lib
from metaqnn import config_lib
from metaqnn import search_space as S
from metaqnn.architecture import FC, GAP, ArchitectureError, Conv, Pool, Softmax, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def paper_space(image_size=32, depth=12):
  return S.SearchSpace(S.SpaceConfig(image_size=image_size, num_classes=10, max_depth=depth))


def allowed_layers(space, state):
  return {space.actions[a] for a in space.allowed_ids[space.state_index[state]]}


def check_legal(arch, cfg):
  """An independent reading of SPEC section 2 on a layer list with true sizes."""
  side, depth, prev, fcs = cfg.image_size, 0, None, 0
  bins = cfg.size_bins
  bin_low = lambda n: next(b for b in bins if n >= b)
  for layer in arch.layers:
    if isinstance(layer, Softmax):
      break
    if isinstance(layer, GAP):
      assert not isinstance(prev, FC)
      continue
    depth += 1
    assert depth <= cfg.max_depth
    assert not isinstance(prev, FC) or isinstance(layer, FC)
    if isinstance(layer, Conv):
      assert layer.stride == 1 and layer.kernel <= bin_low(side)
      assert layer.filters in cfg.conv_filters and layer.kernel in cfg.conv_kernels
    elif isinstance(layer, Pool):
      assert isinstance(prev, Conv), "pooling only after a convolution"
      assert (layer.kernel, layer.stride) in cfg.pools and layer.kernel <= bin_low(side)
      side = (side - layer.kernel) // layer.stride + 1
    elif isinstance(layer, FC):
      fcs = fcs + 1 if isinstance(prev, FC) else 1
      assert fcs <= cfg.max_fc and layer.units in cfg.fc_units
      if isinstance(prev, FC):
        assert layer.units <= prev.units
      else:
        low = bin_low(side)
        upper = bins[bins.index(low) - 1] - 1 if low != bins[0] else float("inf")
        assert upper <= cfg.fc_max_side
    prev = layer
  assert arch.num_classes == cfg.num_classes


def test_start_state_rules():
  space = paper_space()
  layers = allowed_layers(space, space.states[0])
  assert space.states[0] == S.State(S.START, 0, 0)
  assert {l for l in layers if isinstance(l, Conv)} == {
      Conv(d, f, 1) for d in (64, 128, 256, 512) for f in (1, 3, 5)}
  assert not any(isinstance(l, (Pool, FC)) for l in layers)  # no pooling or FC at 32px
  assert GAP(10) in layers and Softmax(10) in layers


def test_conv_state_rules_per_bin():
  space = paper_space()
  big = allowed_layers(space, S.State(S.CONV, 1, 0, 64, 3))
  assert {Pool(5, 3), Pool(3, 2), Pool(2, 2), GAP(10), Softmax(10)} <= big
  assert not any(isinstance(l, FC) for l in big)  # side >= 8: no FC
  mid = allowed_layers(space, S.State(S.CONV, 5, 1, 64, 3))  # sides 4..7
  assert {l.kernel for l in mid if isinstance(l, Conv)} == {1, 3}
  assert {l for l in mid if isinstance(l, Pool)} == {Pool(3, 2), Pool(2, 2)}
  assert {l for l in mid if isinstance(l, FC)} == {FC(512), FC(256), FC(128)}
  small = allowed_layers(space, S.State(S.CONV, 8, 2, 64, 1))  # sides 1..3
  assert {l.kernel for l in small if isinstance(l, Conv)} == {1}
  assert not any(isinstance(l, Pool) for l in small)
  assert FC(512) in small


def test_pool_state_cannot_pool_again():
  space = paper_space()
  layers = allowed_layers(space, S.State(S.POOL, 2, 0, 2, 2))
  assert not any(isinstance(l, Pool) for l in layers)
  assert any(isinstance(l, Conv) for l in layers) and GAP(10) in layers


def test_fc_rules():
  space = paper_space()
  after_one = allowed_layers(space, S.State(S.FCL, 5, -1, 256, 1))
  assert after_one == {FC(256), FC(128), Softmax(10)}  # no larger FC, no GAP, no conv
  assert allowed_layers(space, S.State(S.FCL, 6, -1, 256, 2)) == {Softmax(10)}  # max two


def test_max_depth_only_terminates():
  space = paper_space(depth=12)
  for s in space.states:
    layers = allowed_layers(space, s)
    if s.depth == 12:
      assert layers <= {GAP(10), Softmax(10)}
    assert s.depth <= 12


def test_pooling_transition_is_stochastic_between_bins():
  # 32 -> C -> P(2,2) -> 16 -> C -> P(2,2) -> 8 (bin 0); 28 -> ... -> 7 (bin 1).
  for size, expected_bin in ((32, 0), (28, 1)):
    space = paper_space(image_size=size)
    path = space.path(parse("[C(64,3,1), P(2,2), C(64,3,1), P(2,2), SM(10)]"))
    assert space.states[path.states[-1]].bin == expected_bin
  space = paper_space(image_size=32)
  # The same (state, action) reached with true sides 16 and 15 lands in different bins.
  p1 = space.path(parse("[C(64,3,1), P(2,2), C(64,3,1), P(2,2), SM(10)]"))
  p2 = space.path(parse("[C(64,3,1), P(3,2), C(64,3,1), P(2,2), SM(10)]"))
  assert space.states[p1.states[-2]] == space.states[p2.states[-2]]
  assert space.states[p1.states[-1]].bin != space.states[p2.states[-1]].bin


def test_fc_state_key_is_the_same_from_every_bin():
  # SPEC section 5: FC keys must not depend on the path that led there.
  space = paper_space(image_size=28)
  a = space.path(parse("[C(64,3,1), P(2,2), C(64,3,1), P(2,2), FC(128), SM(10)]"))
  b = space.path(parse("[C(64,3,1), P(2,2), C(64,3,1), P(3,2), FC(128), SM(10)]"))
  assert a.states[-1] == b.states[-1]


def test_outside_the_space_is_a_clear_error():
  space = paper_space()
  for text, fragment in [
      ("[P(2,2), SM(10)]", "not allowed in state start"),
      ("[C(64,3,1), P(2,2), P(2,2), SM(10)]", "layer 3 (P(2,2))"),
      ("[C(64,7,1), SM(10)]", "not one of this space's layer choices"),
      ("[C(64,3,1), FC(512), SM(10)]", "layer 2 (FC(512))"),
      ("[C(64,3,1), SM(100)]", "100 classes"),
      ("[" + "C(64,3,1), " * 13 + "SM(10)]", "layer 13"),
  ]:
    with pytest.raises(ArchitectureError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
      space.path(text)


@pytest.mark.parametrize("name", ["digits", "mnist", "svhn", "cifar10"])
def test_random_samples_are_legal_and_replay_to_the_same_path(name):
  config = load_config(name)
  space = S.from_config(config)
  agent = agent_lib.Agent(space, seed=1)
  seen = set()
  for i in range(1500):
    path = agent.sample(1.0 if i % 2 else 0.3)
    arch = path.architecture
    check_legal(arch, space.cfg)
    again = space.path(parse(str(arch)))
    assert (again.states, again.actions) == (path.states, path.actions)
    seen.add(str(arch))
  assert len(seen) > 500


def test_enumeration_is_consistent():
  space = S.from_config(load_config("cifar10"))
  assert space.allowed.shape == (space.num_states, space.num_actions)
  assert len(set(space.states)) == space.num_states


@pytest.mark.parametrize("name", ["mnist", "digits"])
def test_every_state_is_reachable_and_can_terminate(name):
  """Reachability: every state is met on some walk from the start. Co-reachability: from
  every (state, true side) met, some walk ends in a termination (SM or GAP)."""
  space = S.from_config(load_config(name))
  start = (0, space.cfg.image_size)
  succ, seen, frontier = {}, {start}, [start]
  while frontier:
    node = frontier.pop()
    succ[node] = []
    for a in space.allowed_ids[node[0]]:
      nxt = space.step(node[0], node[1], int(a))
      if nxt[0] is None:
        continue
      succ[node].append(nxt)
      if nxt not in seen:
        seen.add(nxt)
        frontier.append(nxt)
  assert {state for state, _ in seen} == set(range(space.num_states))
  ends = {n for n in seen if space.terminal[space.allowed_ids[n[0]]].any()}
  changed = True
  while changed:  # grow the set of nodes that can reach a termination
    before = len(ends)
    ends |= {n for n in seen if any(m in ends for m in succ[n])}
    changed = len(ends) > before
  assert ends == seen


def tiny_space():
  return S.SearchSpace(S.SpaceConfig(image_size=8, num_classes=3, max_depth=3,
                                     conv_filters=(4, 8), conv_kernels=(1, 3),
                                     pools=((2, 2),), fc_units=(16, 8), size_bins=(4, 2, 1),
                                     fc_max_side=3))


def all_architectures(space):
  """Every architecture of `space`, by brute-force recursion over its steps."""
  archs = set()

  def extend(state, side, actions):
    for a in space.allowed_ids[state]:
      nxt, nside = space.step(state, side, int(a))
      if nxt is None:
        archs.add(str(space.architecture(actions + [int(a)])))
      else:
        extend(nxt, nside, actions + [int(a)])

  extend(0, space.cfg.image_size, [])
  return archs


def test_count_architectures_matches_brute_force():
  space = tiny_space()
  archs = all_architectures(space)
  assert space.count_architectures() == len(archs) > 50
  for text in archs:
    check_legal(parse(text), space.cfg)


class Scripted:
  """A stand-in for the generator: takes the given actions, multiplies their probabilities."""

  def __init__(self, actions):
    self.actions, self.probability = iter(actions), 1.0

  def choice(self, ids, p):
    a = next(self.actions)
    self.probability *= p[list(ids).index(a)]
    return a


def test_uniform_path_gives_every_architecture_the_same_probability():
  """Exactly, on a space where pooling lands in either of two bins (the true side, not
  the state, decides what follows)."""
  space = S.SearchSpace(S.SpaceConfig(image_size=8, num_classes=3, max_depth=4,
                                      conv_filters=(4,), conv_kernels=(1, 3),
                                      pools=((2, 2), (3, 2)), fc_units=(8,),
                                      size_bins=(3, 1), fc_max_side=3))
  assert space.stats()["stochastic_state_actions"] > 0
  archs = all_architectures(space)
  assert space.count_architectures() == len(archs) > 100
  for text in archs:
    rng = Scripted(space.path(parse(text)).actions)
    assert str(space.uniform_path(rng).architecture) == text
    assert rng.probability == pytest.approx(1 / len(archs), rel=1e-9)
  path = space.uniform_path(np.random.default_rng(0))
  assert space.path(path.architecture) == path


def test_stats_and_sample_commands():
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *args: subprocess.run([sys.executable, "-m", "metaqnn.space", *args],
                                     cwd=ROOT, env=env, capture_output=True, text=True)
  stats = run("stats", "--config=configs/mnist.py")
  assert stats.returncode == 0, stats.stderr
  stats = json.loads(stats.stdout)
  space = S.from_config(load_config("mnist"))
  assert stats["num_states"] == space.num_states
  assert stats["num_state_actions"] == int(space.allowed.sum())
  assert sum(stats["states_by_type"].values()) == space.num_states
  first = run("sample", "--config=configs/mnist.py", "--num=50", "--seed=3")
  second = run("sample", "--config=configs/mnist.py", "--num=50", "--seed=3")
  other = run("sample", "--config=configs/mnist.py", "--num=50", "--seed=4")
  lines = first.stdout.splitlines()
  assert len(lines) == 50 and first.stdout == second.stdout != other.stdout
  for line in lines:
    check_legal(parse(line), space.cfg)
  uniform = run("sample", "--config=configs/mnist.py", "--num=50", "--seed=3", "--uniform")
  assert uniform.returncode == 0, uniform.stderr
  drawn = [parse(line) for line in uniform.stdout.splitlines()]
  assert len(drawn) == 50 and uniform.stdout != first.stdout
  for arch in drawn:
    check_legal(arch, space.cfg)
  for eps in ("5", "-1", "nan"):
    wrong = run("sample", "--config=configs/mnist.py", f"--epsilon={eps}")
    assert wrong.returncode == 2 and "--epsilon must be in [0, 1]" in wrong.stderr
  both = run("sample", "--config=configs/mnist.py", "--uniform", "--epsilon=0.5")
  assert both.returncode != 0 and "Traceback" not in both.stderr and "--epsilon" in both.stderr
  for how in ([], ["--uniform"]):  # the config's seed, checked like --seed
    negative = run("sample", "--config=configs/mnist.py", "--config.seed=-1", *how)
    assert negative.returncode == 2 and negative.stderr.strip() == (
        "error: seed must be >= 0, got -1"), negative.stderr
  # Uniform over the space means mostly deep networks; the walks stop early.
  assert (np.mean([len(a.layers) for a in drawn]) >
          np.mean([len(parse(line).layers) for line in lines]) + 2)
  bad = run("stats", "--config=configs/mnist.py", "--config.space.size_bins=3,2")
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "size_bins" in bad.stderr


def test_bad_space_config():
  with pytest.raises(ValueError, match="size_bins"):
    S.SpaceConfig(image_size=32, num_classes=10, size_bins=(4, 8, 1))
  with pytest.raises(ValueError, match="conv_filters"):
    S.SpaceConfig(image_size=32, num_classes=10, conv_filters=())
  with pytest.raises(ValueError, match="unknown data set"):
    config_lib.base_config("imagenet")


@pytest.mark.parametrize("field,value", [("conv_filters", "abc"), ("conv_filters", (16.5, 32)),
                                         ("pools", "abc"), ("pools", ((3.5, 2),)),
                                         ("pools", ((3, 2), (2,))), ("size_bins", "abc")])
def test_space_fields_that_are_not_whole_numbers_are_refused_not_read_otherwise(field, value):
  """An override that is not whole numbers is a clear error: "abc" used to raise from
  int(), and 16.5 was read as 16."""
  import ml_collections
  config = config_lib.base_config("digits")
  given = lambda v: ml_collections.ConfigDict({**config.space.to_dict(), field: v})
  config.space = given(value)  # as a command-line override can leave it
  with pytest.raises(UserError, match=f"space.{field}"):
    S.SpaceConfig.from_config(config)
  config.space = given({"conv_filters": (16.0, 32), "pools": ((3.0, 2),),
                        "size_bins": (4.0, 2, 1)}[field])  # whole numbers as floats: fine
  read = getattr(S.SpaceConfig.from_config(config), field)
  flat = [x for v in read for x in (v if isinstance(v, tuple) else (v,))]
  assert all(type(x) is int for x in flat), read


def test_sample_walks_with_a_searchs_agent(tmp_path):
  """`--workdir` walks with what a search's agent learned: at epsilon 0 its greedy
  choice, a few architectures; without it, epsilon below 1 is refused (an untrained agent
  walks at random whatever epsilon says)."""
  from metaqnn import config_lib, search
  config = config_lib.base_config("mnist")
  config.evaluator = "synthetic"
  config.search.schedule = "1.0:30,0.1:30"
  config.search.replay_samples = 20
  workdir = str(tmp_path / "w")
  search.run_search(config, workdir, log_interval=1e9, tensorboard=False)
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *args: subprocess.run([sys.executable, "-m", "metaqnn.space", *args],
                                     cwd=ROOT, env=env, capture_output=True, text=True)
  greedy = run("sample", f"--workdir={workdir}", "--epsilon=0", "--num=40")
  again = run("sample", f"--workdir={workdir}", "--epsilon=0", "--num=40")
  walks = run("sample", f"--workdir={workdir}", "--num=40")
  assert greedy.returncode == 0, greedy.stderr
  assert greedy.stdout == again.stdout  # seeded: config.seed, or --seed
  space = S.from_config(config)
  for line in greedy.stdout.splitlines():
    check_legal(parse(line), space.cfg)
  assert len(set(greedy.stdout.splitlines())) < len(set(walks.stdout.splitlines())) / 2
  costs = run("costs", f"--workdir={workdir}", "--epsilon=0.1", "--num=50")
  assert costs.returncode == 0, costs.stderr
  assert json.loads(costs.stdout)["sampling"] == "the search's agent's walks at epsilon 0.1"
  stats = run("stats", f"--workdir={workdir}", "--epsilon=0.3")
  assert stats.returncode == 2 and "stats counts the space; it takes no --epsilon" in \
      stats.stderr, stats.stderr
  for args, says in [
      (["--config=configs/mnist.py", "--epsilon=0.5"], "--epsilon below 1 needs --workdir"),
      ([f"--workdir={workdir}", "--config=configs/mnist.py"], "one of them"),
      ([f"--workdir={tmp_path}"], str(tmp_path))]:
    wrong = run("sample", *args)
    assert wrong.returncode == 2 and says in wrong.stderr, wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr


def test_the_space_library_imports_beside_a_command():
  """Its flags are the command's only: a benchmark or notebook imports `sampler` and
  `cost_percentiles` in a process that has other flags (main's --config, --workdir)."""
  out = subprocess.run([sys.executable, "-c", "import metaqnn.main, metaqnn.space"], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
  assert out.returncode == 0, out.stderr


def test_a_config_file_that_cannot_load_is_its_last_line(tmp_path):
  """ml_collections hands over the whole traceback; its last line says what went wrong."""
  (tmp_path / "broken.py").write_text("def get_config():\n  raise ValueError('bad thing')\n")
  run = lambda config: subprocess.run(
      [sys.executable, "-m", "metaqnn.space", "stats", f"--config={config}"], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
  (tmp_path / "syntax.py").write_text("def get_config(:\n  pass\n")
  (tmp_path / "nofunction.py").write_text("x = 1\n")  # not a field of an override: no function
  for config, says in ((tmp_path / "broken.py", "ValueError: bad thing"),
                       (tmp_path / "nofunction.py", "it defines no get_config() function"),
                       ("configs/digits.py:foo", "only configs/custom.py takes an argument"),
                       (tmp_path / "syntax.py", "SyntaxError: invalid syntax ("),
                       # metaqnn's own error, raised by the file: its words, not its class
                       ("configs/custom.py:imagenet_fake", "file: unknown data set")):
    out = run(config)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: cannot load the config file: ") and says in \
        out.stderr, out.stderr
  # A file that is not there, a folder, or none: said so, not "get_config() must return
  # a ConfigDict, not _ErrorConfig" (ml_collections' stand-in).
  for config, says in ((tmp_path / "none.py", f"config file {tmp_path}/none.py: no such file"),
                       (tmp_path, f"config file {tmp_path}: a folder, not a file"),
                       ("", "--config is empty")):
    out = run(config)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and says in out.stderr, \
        out.stderr
  out = subprocess.run([sys.executable, "-m", "metaqnn.space", "sample", "--workdir="],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       text=True)
  assert out.stderr == "error: --workdir is empty; give a search's work directory\n"
  # A get_config that returns something else (a dict, or nothing): said, not an
  # AttributeError later (nor absl's warnings first).
  for name, body, kind in (("dict", "return {'a': 1}", "dict"), ("none", "pass", "NoneType")):
    (tmp_path / f"{name}.py").write_text(f"def get_config():\n  {body}\n")
    out = run(tmp_path / f"{name}.py")
    assert out.returncode == 2 and out.stderr.splitlines() == [
        "error: the config file's get_config() must return an ml_collections.ConfigDict, "
        f"not {kind}"], out.stderr


@pytest.mark.parametrize("sig,reader", [("SIGINT", "reads"), ("SIGTERM", "reads"),
                                        ("SIGINT", "gone")])
def test_a_stop_while_a_command_exits_after_its_work_is_one_line(tmp_path, sig, reader):
  """Python still exiting (joining threads, freeing JAX): not a dropped stop with an
  "Exception ignored" traceback, nor silence with status 0; nor a traceback where the
  reader of its output is gone (piped into `head`) and what it still holds cannot go."""
  import signal
  import time
  script = tmp_path / "late.py"
  script.write_text("import atexit, time\nfrom metaqnn import cli\n"
                    "def main(argv):\n  atexit.register(time.sleep, 30)\n"
                    "  print('done', flush=True)\n  print('held')\n"
                    "cli.run(main)\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
  p = subprocess.Popen([sys.executable, str(script)], cwd=ROOT,
                       env=dict(env, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  assert p.stdout.readline() == "done\n"
  if reader == "gone":
    p.stdout.close()
  time.sleep(0.5)  # main has returned: the process is in its atexit sleep
  p.send_signal(getattr(signal, sig))
  if reader == "gone":
    err = p.stderr.read()
    p.wait(timeout=20)
    out = ""
  else:
    out, err = p.communicate(timeout=20)
  assert err == "interrupted as it exited; its work was done\n", err
  assert out in ("", "held\n") and p.returncode == 128 + getattr(signal, sig)


def test_sigterm_stops_a_read_only_command_in_one_line():
  """Not a silent death: one line and the shell's status, as Ctrl-C gives."""
  import signal
  import time
  p = subprocess.Popen([sys.executable, "-m", "metaqnn.space", "costs",
                        "--config=configs/cifar10.py", "--uniform", "--num=10000000"],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(12)  # imported (seconds on a loaded machine), and drawing
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=60)
  assert p.returncode == 143 and err == "interrupted\n" and out == "", (p.returncode, err)


def test_stats_name_options_no_architecture_can_take():
  """The digits config lists 5x5 kernels, which no size bin (4 or less) allows: said,
  rather than left for a reader of the Q-value figure to wonder."""
  from configs import digits, cifar10
  stats = S.from_config(digits.get_config()).stats()
  assert stats["unused_options"] == {"conv_kernels": [5]}
  assert S.from_config(cifar10.get_config()).stats()["unused_options"] == {}


def test_a_ctrl_c_while_a_command_imports_is_one_line():
  """`python -m metaqnn.<command>`: the package, imported first, catches a Ctrl-C in the
  seconds JAX takes to import (Python printed a KeyboardInterrupt traceback); a library
  import (a notebook's) keeps Python's own handler."""
  script = ("import sys; sys.argv = ['-m']\n"  # as `python -m` has it while importing
            "import metaqnn, os, signal, time\n"
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(20)\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
  assert (out.returncode, out.stderr) == (130, "interrupted\n"), out.stderr
  lib = subprocess.run([sys.executable, "-c", "import metaqnn, signal; "
                        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
                       cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
  assert lib.stdout == "True\n", lib.stderr

"""The Q-learning agent: update arithmetic, epsilon-greedy, schedule, save/restore."""

import hashlib
import json
import os

import numpy as np
import pytest

from metaqnn import agent as agent_lib
from metaqnn import search_space as S
from metaqnn.architecture import parse


def tiny_space():
  return S.SearchSpace(S.SpaceConfig(
      image_size=8, num_classes=3, max_depth=3, conv_filters=(4, 8), conv_kernels=(1, 3),
      pools=((2, 2),), fc_units=(16, 8), size_bins=(4, 2, 1), fc_max_side=3))


def test_update_by_hand():
  space = tiny_space()
  agent = agent_lib.Agent(space, alpha=0.1, gamma=1.0, q_init=0.5)
  path = space.path(parse("[C(4,3,1), C(8,1,1), SM(3)]"))
  s0, s1, s2 = path.states
  a0, a1, a2 = path.actions
  # Give s2 a competing action worth 0.9, so the max over s2 is not the updated entry.
  other = [a for a in space.allowed_ids[s2] if a != a2][0]
  agent.q[s2, other] = 0.9
  agent.update(path, reward=0.2)
  # Last transition toward the reward: 0.9 * 0.5 + 0.1 * 0.2 = 0.47
  assert agent.q[s2, a2] == pytest.approx(0.47)
  # Then backwards toward max_u Q[next]: max(0.9, 0.47) = 0.9 -> 0.45 + 0.09 = 0.54
  assert agent.q[s1, a1] == pytest.approx(0.54)
  # max over s1's row: 0.54 (updated) beats 0.5 -> 0.45 + 0.054 = 0.504
  assert agent.q[s0, a0] == pytest.approx(0.504)
  # Nothing else moved.
  changed = np.argwhere((agent.q != 0.5) & np.isfinite(agent.q))
  assert {tuple(x) for x in changed} == {(s2, other), (s2, a2), (s1, a1), (s0, a0)}


def test_gamma_discounts_bootstrap():
  space = tiny_space()
  agent = agent_lib.Agent(space, alpha=0.5, gamma=0.5, q_init=0.0)
  path = space.path(parse("[C(4,3,1), SM(3)]"))
  agent.update(path, 1.0)
  assert agent.q[path.states[1], path.actions[1]] == pytest.approx(0.5)
  assert agent.q[path.states[0], path.actions[0]] == pytest.approx(0.5 * 0.5 * 0.5)


def test_disallowed_pairs_stay_out_of_the_max():
  agent = agent_lib.Agent(tiny_space())
  assert np.all(np.isneginf(agent.q[~agent.space.allowed]))
  assert np.all(agent.q[agent.space.allowed] == 0.5)


def test_greedy_breaks_ties_uniformly_and_follows_q():
  space = tiny_space()
  agent = agent_lib.Agent(space, seed=0)
  firsts = [agent.sample(0.0).actions[0] for _ in range(600)]
  counts = np.bincount(firsts, minlength=space.num_actions)[space.allowed_ids[0]]
  assert counts.min() > 600 / len(counts) * 0.6  # every tied action is chosen
  best = int(space.allowed_ids[0][2])
  agent.q[0, best] = 0.9
  assert all(agent.sample(0.0).actions[0] == best for _ in range(50))


def test_schedule():
  sched = agent_lib.Schedule.parse("1.0:3, 0.5:2,0.1:1")
  assert sched.total == 6
  assert [sched.stage(i) for i in range(7)] == [0, 0, 0, 1, 1, 2, None]
  assert str(sched) == "1:3,0.5:2,0.1:1"
  for bad in ("1.0", "1.0:x", "2.0:3", "0.5:-1", "", "1.0:3,0.0:2"):
    with pytest.raises(ValueError, match="schedule"):
      agent_lib.Schedule.parse(bad)


def test_learn_counts_unique_models_and_replays():
  space = tiny_space()
  agent = agent_lib.Agent(space, alpha=0.1, seed=0)
  arch = "[C(4,3,1), SM(3)]"
  agent.learn(arch, 0.9, new=True, replay_samples=5)
  agent.learn(arch, 0.9, new=False, replay_samples=5)
  assert agent.unique_models == 1 and agent.iterations == 2
  assert agent.replay == [(arch, 0.9), (arch, 0.9)]
  path = space.path(arch)
  # 10 updates of the last pair toward 0.9 from 0.5: 0.9 - 0.4 * 0.9**10
  assert agent.q[path.states[-1], path.actions[-1]] == pytest.approx(0.9 - 0.4 * 0.9 ** 10)
  with pytest.raises(ValueError):
    agent.learn(arch, float("nan"), new=True, replay_samples=1)


def run_agent(agent, n, start=0):
  out = []
  for i in range(start, start + n):
    path = agent.sample(1.0 if i < 10 else 0.2)
    reward = int(hashlib.sha256(str(path.architecture).encode()).hexdigest()[:6], 16) / 16**6
    agent.learn(path.architecture, reward, new=True, replay_samples=7)
    out.append(str(path.architecture))
  return out


def test_determinism_with_seed():
  a = run_agent(agent_lib.Agent(tiny_space(), seed=5), 30)
  b = run_agent(agent_lib.Agent(tiny_space(), seed=5), 30)
  c = run_agent(agent_lib.Agent(tiny_space(), seed=6), 30)
  assert a == b != c


def test_save_restore_round_trip_continues_identically(tmp_path):
  space = tiny_space()
  full = agent_lib.Agent(space, seed=3)
  first = run_agent(full, 15)
  rest = run_agent(full, 15, start=15)

  agent = agent_lib.Agent(space, seed=3)
  assert run_agent(agent, 15) == first
  agent.save(str(tmp_path))
  agent.save(str(tmp_path))  # saving twice keeps exactly one Q-table
  assert sorted(os.listdir(tmp_path)) == ["agent.json", "q-00000015.npz"]
  restored = agent_lib.Agent(space, seed=999)
  restored.load(str(tmp_path))
  np.testing.assert_array_equal(restored.q, agent.q)
  assert restored.replay == agent.replay and restored.unique_models == 15
  assert run_agent(restored, 15, start=15) == rest
  meta = json.load(open(tmp_path / "agent.json"))  # readable without metaqnn
  assert meta["unique_models"] == 15 and len(meta["replay"]) == 15
  with np.load(tmp_path / "q-00000015.npz") as z:
    assert z["q"].shape == (space.num_states, space.num_actions)
    assert len(z["states"]) == space.num_states


def test_load_refuses_another_space(tmp_path):
  agent = agent_lib.Agent(tiny_space())
  agent.save(str(tmp_path))
  other = S.SearchSpace(S.SpaceConfig(image_size=8, num_classes=3, max_depth=4,
                                      conv_filters=(4, 8), conv_kernels=(1, 3),
                                      pools=((2, 2),), fc_units=(16, 8),
                                      size_bins=(4, 2, 1), fc_max_side=3))
  with pytest.raises(ValueError, match="another search space"):
    agent_lib.Agent(other).load(str(tmp_path))



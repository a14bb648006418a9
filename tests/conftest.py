"""Test setup: four fake CPU devices so data-parallel code is exercised on any machine;
temporary files inside pytest's folder."""

import os
import signal
import sys
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: subprocesses, Ray, notebooks, kill loops, real "
                          "searches (deselect with -m 'not slow')")


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_stay_in_pytests_folder(tmp_path_factory):
  """tfds' mock data leaves temporary folders behind: keep them in pytest's own folder
  (which pytest prunes), not in the machine's /tmp."""
  old = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
  yield
  tempfile.tempdir = old


@pytest.fixture
def dropped_stop():
  """A Ctrl-C or SIGTERM whose KeyboardInterrupt Python dropped (as it does inside a
  garbage-collection callback): pending in `metaqnn.signals` until the test ends."""
  from metaqnn import signals
  try:
    signals.handler(signal.SIGTERM, None)
  except KeyboardInterrupt:
    pass
  yield
  signals._requested.clear()  # pylint: disable=protected-access

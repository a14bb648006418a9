"""The Colab notebook runs top to bottom (tiny settings), as a fresh process would run it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "metaqnn_digits.ipynb")


# Part 2 of the notebook downloads MNIST with tfds; here tfds' mock data stands in for it.
MOCK_TFDS = f"""
import json
import sys
sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
import tensorflow_datasets as tfds
from tfds_mock import mock_source_cls
_MOCK = tfds.testing.mock_data(num_examples=300,
                               mock_array_record_data_source=mock_source_cls()())
_MOCK.__enter__()  # held until the script ends
"""


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
  """Both parts: digits, and the MNIST path of Colab (tfds mock data, no network)."""
  nb = json.load(open(NOTEBOOK))
  cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  assert cells, "the notebook has no code"
  script = tmp_path / "notebook.py"
  script.write_text(MOCK_TFDS + "\n\n".join(cells)
                    + "\nprint('RESULTS', json.dumps(results))\n"
                    + "print('MNIST', json.dumps(summary['unique_models']))\n")
  env = dict(os.environ, METAQNN_NOTEBOOK_TINY="1", METAQNN_NOTEBOOK_MNIST="1",
             METAQNN_DATA_DIR=str(tmp_path / "tfds"), PYTHONPATH="")
  out = subprocess.run([sys.executable, str(script)], cwd=os.path.join(ROOT, "notebooks"),
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.split("RESULTS ", 1)[1].splitlines()[0])
  assert len(results["models"]) == 2 and results["ensemble"]["size"] == 2
  assert json.loads(out.stdout.split("MNIST ", 1)[1]) == 4  # the MNIST search ran
  assert "rolling_accuracy.png" in out.stdout or "Figure 3" in out.stdout

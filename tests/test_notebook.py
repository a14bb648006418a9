"""The Colab notebook runs top to bottom (tiny settings), as a fresh process would run it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "metaqnn_digits.ipynb")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
  nb = json.load(open(NOTEBOOK))
  cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  assert cells, "the notebook has no code"
  script = tmp_path / "notebook.py"
  script.write_text("\n\n".join(cells) + "\nprint('RESULTS', json.dumps(results))\n"
                    .replace("json.dumps", "__import__('json').dumps"))
  env = dict(os.environ, METAQNN_NOTEBOOK_TINY="1", PYTHONPATH="")
  out = subprocess.run([sys.executable, str(script)], cwd=os.path.join(ROOT, "notebooks"),
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.split("RESULTS ", 1)[1])
  assert len(results["models"]) == 2 and results["ensemble"]["size"] == 2

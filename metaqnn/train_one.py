"""Train one architecture with a config's settings; the last line printed is its JSON result.

  python -m metaqnn.train_one --config=configs/digits.py \
      --arch="[C(32,3,1), P(2,2), C(64,3,1), FC(128), SM(10)]" --config.train.epochs=3

A bad architecture or config gives one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_ARCH = flags.DEFINE_string("arch", None, "Architecture in the paper's notation.")


def _one_line(e: BaseException) -> str:
  return "error: " + " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {' '.join(argv[1:])!r}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # No backend-probing INFO lines on stderr.
  if _CONFIG.value is None or not _ARCH.value:
    sys.exit("error: give --config=configs/<name>.py and --arch=\"[...]\"")
  try:
    config = _CONFIG.value
    config.train  # A config file that failed to load raises here, not before.
  except OSError as e:
    sys.exit(_one_line(e))
  from metaqnn import input_pipeline, train  # Imports JAX: only when there is work to do.
  from metaqnn.architecture import ArchitectureError

  try:
    trainer = train.Trainer(config)
    trainer.check(_ARCH.value)
  except (ArchitectureError, input_pipeline.DatasetError, ValueError, KeyError,
          AttributeError) as e:
    sys.exit(_one_line(e))
  print(json.dumps(trainer.evaluate(_ARCH.value).to_json()))


if __name__ == "__main__":
  from metaqnn import cli
  app.run(main, flags_parser=cli.parse_flags)

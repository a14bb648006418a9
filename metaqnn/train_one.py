"""Train one architecture with a config's settings; the last line printed is its JSON result.

  python -m metaqnn.train_one --config=configs/digits.py \\
      --arch="[C(32,3,1), P(2,2), C(64,3,1), FC(128), SM(10)]" --config.train.epochs=3

Epochs are shown on stderr as they finish. A bad architecture or config gives one line
on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags


def _print_epoch(attempt: int, epoch: int, accuracy: float, loss: float) -> None:
  print(f"attempt {attempt + 1} epoch {epoch + 1}: validation accuracy {accuracy:.4f}, "
        f"training loss {loss:.4f}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
  from metaqnn import cli
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments {' '.join(argv[1:])!r}")
  if _CONFIG.value is None or not _ARCH.value:
    raise cli.UserError("give --config=configs/<name>.py and --arch=\"[...]\"")
  cli.handle_stops()  # Ctrl-C or SIGTERM: one line, even where Python drops the interrupt
  config = _CONFIG.value
  from metaqnn import config_lib
  config_lib.check_seed(config)
  from metaqnn import train  # Imports JAX: only when there is work to do.
  train.check_settings(config, final=False)  # as a search checks them
  trainer = train.Trainer(config, on_epoch=_print_epoch)
  trainer.check(_ARCH.value)
  print(f"training {_ARCH.value} on {config.dataset.name} ({config.train.epochs} epochs); "
        "compiling...", file=sys.stderr, flush=True)
  print(json.dumps(trainer.evaluate(_ARCH.value).to_json()))


if __name__ == "__main__":  # flags only for the command: it imports beside metaqnn.main
  from metaqnn import cli
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                            lock_config=True)
  _ARCH = flags.DEFINE_string("arch", None, "Architecture in the paper's notation.")
  cli.run(main)

"""MetaQNN: Q-learning designs CNN architectures (Baker et al., ICLR 2017)."""

import sys as _sys

if _sys.argv[:1] == ["-m"]:  # `python -m metaqnn.<command>`, locating it: imports to come
  import os as _os
  import signal as _signal

  def _interrupted_while_importing(signum, frame):
    """A Ctrl-C in a command's first seconds (JAX importing): one line, not Python's
    KeyboardInterrupt traceback. `cli.run` puts Python's handler back before any work."""
    _sys.stderr.write("interrupted\n")
    _os._exit(128 + signum)

  _signal.signal(_signal.SIGINT, _interrupted_while_importing)

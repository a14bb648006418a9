"""Files written whole or not at all: a kill mid-write leaves the previous version; and
read back with one line of error where they were damaged all the same."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from metaqnn.errors import UserError


def write_json(path: str, obj: Any, indent: Optional[int] = None) -> None:
  """Writes `obj` as JSON to `path` through a synced temporary file and a rename."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path: str, what: str = "") -> Any:
  """The JSON at `path`; a damaged file (edited by hand, or written by something else) is
  a one-line UserError naming it and `what` to do, not a traceback."""
  with open(path) as f:
    try:
      return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
      raise UserError(f"{path} is damaged ({type(e).__name__}: {e}){'; ' + what if what else ''}"
                      ) from None

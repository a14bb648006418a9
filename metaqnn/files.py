"""Files written whole or not at all: a kill mid-write leaves the previous version."""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def write_json(path: str, obj: Any, indent: Optional[int] = None) -> None:
  """Writes `obj` as JSON to `path` through a synced temporary file and a rename."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)

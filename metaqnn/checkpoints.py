"""Orbax checkpoints of final models' parameters, plus the metadata stored beside them."""

from __future__ import annotations

import os
from typing import Any

from metaqnn import files
from metaqnn.errors import UserError


def save(path: str, params: Any) -> None:
  """Saves a parameter tree to `path` (a new directory) with Orbax; waits for it."""
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(path), params, force=True)
  ckptr.wait_until_finished()
  ckptr.close()


def checkpoint_dir(path: str) -> str:
  """The checkpoint of a final model (or transfer run) given its folder or the
  `checkpoint` folder in it, as users name either."""
  inner = os.path.join(path, "checkpoint")
  return inner if os.path.isdir(inner) else path


def restore(path: str) -> Any:
  """Restores a parameter tree (host NumPy arrays) saved by `save` (at `path`, or in the
  model folder `path`); one line of error for a missing or damaged one."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(checkpoint_dir(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  ckptr = ocp.StandardCheckpointer()
  try:
    return ckptr.restore(path)
  except (OSError, ValueError) as e:  # orbax / tensorstore: files missing or cut short
    why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    raise UserError(f"cannot read the checkpoint at {path} (damaged or incomplete: {why}); "
                    "move the model's folder aside and train it again") from None
  finally:
    ckptr.close()


def input_metadata(config, dataset) -> dict:
  """What a final model needs beside its weights to classify new images (stored in its
  meta.json): the normalisation it was trained with, and the class names if the data has
  them (`metaqnn.predict`)."""
  from metaqnn import input_pipeline
  return {"normalization": {"preprocess": dataset.preprocess,
                            "mean": [float(m) for m in dataset.mean]},
          "class_names": input_pipeline.class_names(config)}


def metadata(path: str) -> dict:
  """The `meta.json` written beside a final model's checkpoint (arch, metrics, config)."""
  path = os.path.abspath(path)
  meta = os.path.join(os.path.dirname(path.rstrip("/")), "meta.json")
  if not os.path.exists(meta):
    raise FileNotFoundError(f"{path} is not a metaqnn checkpoint (no meta.json beside it)")
  return files.read_json(meta, f"move {os.path.dirname(meta)} aside and run the final "
                         "stage (or transfer) again to train it anew")

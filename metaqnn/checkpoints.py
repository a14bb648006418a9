"""Orbax checkpoints of final models' parameters, plus the metadata stored beside them."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

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
  `checkpoint` folder in it, as users name either; a search's work directory is said to
  be one, in one line."""
  path = os.path.expanduser(path)
  from metaqnn import store  # pylint: disable=import-outside-toplevel
  if os.path.isfile(os.path.join(path, store.DB_FILE)):
    raise UserError(f"{path} is a search's work directory; give one of its final models, "
                    f"{os.path.join(path, store.FINAL_DIR, '<hash>')}")
  inner = os.path.join(path, "checkpoint")
  # (a model folder whose checkpoint is missing: named, for "no checkpoint at ...")
  return inner if os.path.isdir(inner) or os.path.isfile(os.path.join(path, "meta.json")) \
      else path


def _without_closed_loops(hook: Callable) -> Callable:
  """`hook` (a `sys.unraisablehook`) without reports of a RuntimeError of a closed event
  loop: what a failed restore's callbacks leave behind."""
  def quiet(unraisable):
    if not (unraisable.exc_type is RuntimeError
            and "Event loop is closed" in str(unraisable.exc_value)):
      hook(unraisable)

  quiet.closed_loops_quiet = True
  return quiet


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
    # Late callbacks of tensorstore reads still in flight meet orbax's closed event loop:
    # their "Event loop is closed" is not reported.
    if not getattr(sys.unraisablehook, "closed_loops_quiet", False):  # once
      sys.unraisablehook = _without_closed_loops(sys.unraisablehook)
    why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    raise UserError(f"cannot read the checkpoint at {path} (damaged or incomplete: {why}); "
                    "move the model's folder aside and train it again") from None
  finally:
    ckptr.close()


def input_metadata(config, dataset, names: bool = True) -> dict:
  """What a final model needs beside its weights to classify new images (stored in its
  meta.json): the normalisation it was trained with, and the class names if the data has
  them (`metaqnn.predict`); `names=False` for data given in memory, which has none."""
  from metaqnn import input_pipeline
  return {"normalization": {"preprocess": dataset.preprocess,
                            "mean": [float(m) for m in dataset.mean]},
          "class_names": input_pipeline.class_names(config) if names else None}


def metadata(path: str) -> dict:
  """The `meta.json` written beside a final model's checkpoint (arch, metrics, config)."""
  path = os.path.abspath(path)
  meta = os.path.join(os.path.dirname(path.rstrip("/")), "meta.json")
  if not os.path.exists(meta):
    raise UserError(f"{path} is not a metaqnn checkpoint (no meta.json beside it)")
  what = (f"move {os.path.dirname(meta)} aside and run the final stage (or transfer) again "
          "to train it anew")
  out = files.read_json(meta, what)
  try:
    ok = (isinstance(out, dict) and isinstance(out["arch"], str)
          and len(out["input_shape"]) == 3
          and all(type(n) is int and n >= 1 for n in out["input_shape"]))
  except (KeyError, TypeError, ValueError):
    ok = False
  if not ok:
    raise UserError(f"{meta} is not a final model's meta.json (its arch or input_shape is "
                    f"missing or invalid); {what}")
  names, norm = out.get("class_names"), out.get("normalization")
  k = _classes(out["arch"])  # (None: `load` names the arch that does not parse)
  if not (names is None or isinstance(names, list) and all(isinstance(n, str) for n in names)
          and k in (None, len(names))):
    raise UserError(f"{meta} is not a final model's meta.json (its class_names are not one "
                    f"name per class of {out['arch']}); {what}")
  from metaqnn.input_pipeline import PREPROCESS
  if not (norm is None or isinstance(norm, dict) and norm.get("preprocess") in PREPROCESS
          and isinstance(norm.get("mean"), list)
          and len(norm["mean"]) == out["input_shape"][-1]
          and all(isinstance(m, (int, float)) for m in norm["mean"])):
    raise UserError(f"{meta} is not a final model's meta.json (its normalization is "
                    f"invalid); {what}")
  return out


def _classes(arch: str) -> Optional[int]:
  """The number of classes of `arch`, or None where it does not parse (`load` says so)."""
  from metaqnn.architecture import ArchitectureError, parse
  try:
    return parse(arch).num_classes
  except ArchitectureError:
    return None


def load(path: str) -> tuple[dict, Any]:
  """(meta.json, parameters) of a final model (or transfer run), its folder or checkpoint
  given; one line of error where they do not belong together."""
  from metaqnn import models
  from metaqnn.architecture import parse
  import jax
  path = checkpoint_dir(path)
  meta = metadata(path)
  try:
    arch = parse(meta["arch"])
  except ValueError as e:
    raise UserError(f"the arch of {path}'s meta.json is not an architecture: {e}") from None
  params = restore(path)
  shape = lambda tree: jax.tree.map(lambda leaf: tuple(leaf.shape), tree)
  if shape(params) != shape(models.param_shapes(models.CNN(arch), meta["input_shape"])):
    raise UserError(f"the checkpoint at {path} does not hold the parameters of its "
                    f"meta.json's architecture {arch}; move the model's folder aside and "
                    "train it again")
  return meta, params

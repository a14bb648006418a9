"""Shared command-line plumbing: user errors become one clear line and a non-zero exit."""

from __future__ import annotations

import ast
import decimal
import os
import re
import signal
import sqlite3
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from metaqnn import signals
from metaqnn.errors import UserError  # the commands' user-error type (a ValueError)


def python() -> str:
  """This interpreter as a user would type it (`.venv/bin/python` from the repository),
  for the commands that messages suggest: a bare `python` may lack the dependencies."""
  exe = sys.executable or "python"
  relative = os.path.relpath(exe)
  return relative if not relative.startswith("..") else exe


def handle_stops() -> None:
  """For a long command, from its first line: Ctrl-C and SIGTERM (preemption, `kill`)
  raise KeyboardInterrupt, which `stop` turns into one line and the shell's status, and
  one that Python drops (`metaqnn.signals`) is raised at the next check."""
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signals.handler)
  sys.unraisablehook = signals.quiet_drops(sys.unraisablehook)


def _say_before_exit(message: str) -> None:
  """`message` on stderr and both streams flushed, before an exit at once (which
  flushes nothing); a reader gone (output piped into `head`) is no error then."""
  try:
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
  except OSError:
    pass


def stop(message: str) -> None:
  """Exits at once after an interrupt, with the shell's status (130 after Ctrl-C, 143
  after SIGTERM): everything worth keeping is on disk, and work still running in worker
  threads must not hold the exit up."""
  signals.release_pending()  # a lock that work still running would release: now
  _say_before_exit(message)
  os._exit(signals.exit_status())


def run(main: Callable[[list[str]], int | None]) -> None:
  """`absl.app.run(main)`, reporting user errors as `error: ...` on stderr, exit 2, and a
  stop as one line, with the shell's status."""

  def wrapped(argv):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (metaqnn/__init__.py's)
    if not flags.FLAGS["verbosity"].present:  # libraries' logs only when asked for
      logging.set_verbosity(logging.ERROR)    # (--verbosity=0 shows them)
    # SIGTERM stops every command as Ctrl-C does: one line and status 143, not a silent
    # death (the long commands also catch the Ctrl-C that Python drops: handle_stops).
    signal.signal(signal.SIGTERM, signals.handler)
    try:
      status = main(argv)
      # A stop while Python exits after the work: one line, not a traceback or silence.
      late = signals.after_work(lambda: _say_before_exit(
          "interrupted as it exited; its work was done"))
      for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, late)
      return status
    except KeyboardInterrupt:  # a command's own message is more precise: it catches first
      stop("interrupted")
    except BrokenPipeError:  # output piped into `head`: not an error
      sys.stderr.close()
      sys.exit(0)
    except OSError as e:  # a path the user gave that cannot be read or written
      lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
      if "config file" in str(e):  # ml_collections reports it over several lines
        _fail(f"cannot load the config file: {lines[-1]}")
      if e.filename and e.strerror:  # "path: No such file or directory", not "[Errno 2] ..."
        _fail(f"{e.filename}: {e.strerror}")
      _fail(lines[0])
    except (UserError,) + _lazy_user_errors() as e:  # anything else is a bug: traceback
      _fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    except sqlite3.DatabaseError as e:  # a record damaged, or not writable, once opened
      from metaqnn import store  # pylint: disable=import-outside-toplevel
      _fail(store.unusable("the work directory's metaqnn.db", e))

  app.run(wrapped, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a bad flag, a `--config.x.y=...` override or a config file
  that cannot be loaded reported as one line."""
  if not any(a.startswith("--verbosity") for a in argv):  # (its warnings, while parsing)
    logging.set_verbosity(logging.ERROR)
  try:
    rest = flags.FLAGS(_whole_numbers(argv))
  except SyntaxError as e:  # the config file's own code
    _fail(f"cannot load the config file: SyntaxError: {e.msg} ({e.filename}, line "
          f"{e.lineno})")
  except (KeyError, AttributeError) as e:  # ml_collections: no such config field
    if "has no attribute 'get_config'" in str(e):  # (a module, not a field)
      _fail("cannot load the config file: it defines no get_config() function")
    _fail("bad --config override: unknown field " + _one_line(e.args[0] if e.args else e))
  except OSError as e:  # ml_collections: the config file (met while applying an override)
    _fail(f"cannot load the config file: {_last_line(e)}")
  except (flags.Error, TypeError, ValueError) as e:
    message = _one_line(e)
    if "Error whilst parsing config file" in message:  # ml_collections: its traceback
      last = _last_line(e)
      message = (f"cannot load the config file: {last}" + (
          " (only configs/custom.py takes an argument after ':')"
          if "get_config() takes 0 positional arguments" in last else ""))
    whole = re.match(r"flag (--config\.[\w.]+=\S*): invalid literal for int\(\) with base 10",
                     message)
    if whole and _too_large(whole.group(1).partition("=")[2]):  # past any count meant
      message = f"{whole.group(1)}: too large for this setting"
    elif whole:  # not int()'s own words: the field takes a whole number
      message = (f"{whole.group(1)}: this setting takes a whole number (1e8 may be written "
                 "for 100000000)")
    booly = re.match(r"flag (--config\.[\w.]+=\S*): \('Non-boolean argument", message)
    if booly:  # not a tuple's repr
      message = f"{booly.group(1)}: this setting takes True or False"
    group = re.match(r"flag (--config\.[\w.]+)=.* as a ConfigDict", message)
    if group:  # ml_collections would name the parser's internals (an ast node)
      message = (f"{group.group(1)} is a group of settings, not one value; set its fields "
                 f"({group.group(1)}.FIELD=VALUE; metaqnn/config_lib.py lists them)")
    _fail(message)
  if "config" in flags.FLAGS and flags.FLAGS["config"].present:
    import ml_collections  # pylint: disable=import-outside-toplevel
    value = flags.FLAGS["config"].value
    if type(value).__name__ == "_ErrorConfig":  # ml_collections' stand-in for a file it
      error = object.__getattribute__(value, "_error")  # could not load (missing, a folder)
      path = flags.FLAGS["config"].config_filename
      if not path:
        _fail("--config is empty; give a config file, e.g. --config=configs/digits.py")
      name = path.split(":", 1)[0]  # (custom.py:ARG)
      why = ("no such file" if not os.path.exists(name) else
             "a folder, not a file" if os.path.isdir(name) else _last_line(error))
      _fail(f"cannot load the config file {path}: {why}")
    if not isinstance(value, ml_collections.ConfigDict):  # (None: a forgotten return)
      _fail(f"the config file's get_config() must return an ml_collections.ConfigDict, "
            f"not {type(value).__name__}")
  return rest


def _last_line(e: BaseException) -> str:
  """The last line of an error's text (a traceback's: what went wrong), without the class
  name of metaqnn's own errors (a config file that refuses its argument): their words
  are for the user."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return re.sub(r"^metaqnn\.[\w.]*Error: ", "", lines[-1]) if lines else type(e).__name__


def _whole_numbers(argv: list[str]) -> list[str]:
  """`--config.x.y=1e8` (or `--config.x.y 1e8`) as `--config.x.y=100000000`: a whole
  number in exponent notation (a FLOPs limit, say) is read by an integer field too, and
  means the same to a float one."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config.") and "=" not in arg and i + 1 < len(argv):
      rewritten = _whole_number(f"{arg}={argv[i + 1]}")  # the two-argument form
      if rewritten != f"{arg}={argv[i + 1]}":
        out.append(rewritten)
        i += 2
        continue
    out.append(_whole_number(arg))
    i += 1
  return out


def _whole_number(arg: str) -> str:
  """One `--config.x.y=VALUE` argument, its value rewritten if it is a whole number in
  exponent notation (exactly: no float rounding of large counts)."""
  name, eq, value = arg.partition("=")
  if not (name.startswith("--config.") and eq and "e" in value.lower()):
    return arg
  number = _whole(value)
  # (beyond 10**30 no count is meant: left as given, for `_too_large`'s refusal)
  return f"{name}={int(number)}" if number is not None and not _too_large(value) else arg


def _whole(value: str) -> decimal.Decimal | None:
  """`value` where it is a whole number in any notation (exact, and kept a Decimal: 1e9999
  made an int would take a while), else None."""
  try:
    number = decimal.Decimal(value)
  except decimal.InvalidOperation:
    return None
  return number if number.is_finite() and number == number.to_integral_value() else None


def _too_large(value: str) -> bool:
  """Whether `value` is a whole number beyond the 10**30 that `_whole_number` rewrites."""
  number = _whole(value)  # (its exponent compared: 1e999999999 < 10**30 overflows Decimal)
  return number is not None and not number.is_zero() and number.adjusted() >= 30


def _one_line(message) -> str:
  """`message` as one line; ml_collections sometimes hands over a repr'd string."""
  text = str(message)
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  # Sentences run on: "unknown field 'serch'; Did you mean ..." reads as two.
  return " ".join(l + (";" if l[-1] not in ".:;?!," and i < len(lines) - 1 else "")
                  for i, l in enumerate(lines))


def _fail(message: str) -> None:
  """The one line of a user error, and exit 2 at once: what was opened is closed by now,
  and a library's threads left behind (orbax's, after a damaged checkpoint) must not add
  their own tracebacks at the interpreter's exit."""
  print(f"error: {message}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(2)


def _lazy_user_errors() -> tuple[type[BaseException], ...]:
  """The search's own stops, reported as one line too, without importing it eagerly."""
  errors = []
  for name, error in (("metaqnn.search", "WorkersLost"), ("metaqnn.search", "SearchStalled")):
    mod = sys.modules.get(name)
    if mod is not None and hasattr(mod, error):
      errors.append(getattr(mod, error))
  return tuple(errors)

"""Ctrl-C and SIGTERM (preemption, `kill`) stop a search cleanly, even when Python drops
the KeyboardInterrupt; and a worker thread's candidate stops when its pool is closed.

A signal handler's exception is raised wherever the main thread is, and when that is a
garbage-collection callback (JAX registers one), Python prints "Exception ignored" and
goes on: the stop is lost. So the handler here also sets a flag, and the search (at each
step) and the trainer (between epochs) call `check`, which raises what was dropped.

Python's exit waits for every worker thread, so a search that ends with an error while
candidates train in threads would hang until they finish. In a worker thread, `check`
raises `Cancelled` once the pool that runs it was closed (`cancelled_when`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable

_requested = threading.Event()  # a stop was asked for and has not reached the caller
_last = [signal.SIGINT]  # the signal that asked for the last stop
_worker = threading.local()  # in a worker thread: `cancel`, the event that ends its work
_pending_releases: set = set()  # `release_once`'s not yet run
_pending_lock = threading.Lock()


def release_once(release: Callable[[], None]) -> Callable[[], None]:
  """`release` (a lock's) made to run once, by whichever comes first: its owner, once the
  work still running beside a stop ends, or `release_pending`, which a command's stop
  calls as it exits at once (work threads die with it, and the lock file would stay)."""
  guard, ran = threading.Lock(), []

  def once() -> None:
    with guard:
      if ran:
        return
      ran.append(True)
      with _pending_lock:
        _pending_releases.discard(once)
      release()

  with _pending_lock:
    _pending_releases.add(once)
  return once


def release_pending() -> None:
  """Runs every `release_once` not yet run (a command exiting at once)."""
  with _pending_lock:
    pending = list(_pending_releases)
  for release in pending:
    release()


class Cancelled(BaseException):
  """Ends a worker thread's evaluation whose result nobody waits for any more. Not an
  Exception, so that evaluators, which record every failure of a candidate, let it pass."""


def handler(signum, frame):
  """Raises KeyboardInterrupt, and remembers that a stop was asked for, and by which signal."""
  _last[0] = signal.Signals(signum)
  _requested.set()
  raise KeyboardInterrupt


def after_work(say: Callable[[], None]) -> Callable:
  """A handler for once a command's work is done and Python is exiting (joining threads,
  freeing JAX), where a KeyboardInterrupt would be dropped or print a traceback: `say`
  (one line), then exit at once with the shell's status."""

  def stopped(signum, frame):
    _last[0] = signal.Signals(signum)
    try:
      say()
    finally:
      release_pending()  # a lock that a thread still ending would release
      os._exit(exit_status())

  return stopped


def exit_status() -> int:
  """The shell's status for a process ended by the last stop's signal: 130 after Ctrl-C,
  143 after SIGTERM."""
  return 128 + int(_last[0])


def check() -> None:
  """In the main thread, KeyboardInterrupt if a stop was asked for and dropped; in a
  worker thread, `Cancelled` if its pool was closed."""
  if threading.current_thread() is threading.main_thread():
    if _requested.is_set():
      raise KeyboardInterrupt
  elif getattr(_worker, "cancel", None) is not None and _worker.cancel.is_set():
    raise Cancelled


@contextlib.contextmanager
def deferred(second_stops: bool = False):
  """Holds Ctrl-C and SIGTERM back until the block is done; the first then acts as it
  would have (whichever handler is installed). For what must not stop halfway: the
  journal, record and agent moving together, or a put into a queue that another thread
  sleeps on (stopped between its append and its wake-up, the queue can lose the next
  wake-up, and a later join waits for ever). With `second_stops`, a second stop acts at
  once: for a block that can hang on its own (a flush to a stalled disk), where a stop
  halfway is better than none. Main thread only: elsewhere signals cannot be handled,
  and the block runs as it is."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught, previous = [], {}

  def restore() -> None:
    for sig, handler in previous.items():
      signal.signal(sig, handler)

  def hold(num, frame) -> None:
    caught.append((num, frame))
    if second_stops and len(caught) == 2:
      restore()
      _act(previous[num], num, frame)

  previous.update({sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)})
  try:
    yield
  finally:
    restore()
    if caught and not (second_stops and len(caught) > 1):  # else the second acted
      num, frame = caught[0]
      _act(previous[num], num, frame)


def _act(handler, num: int, frame) -> None:
  """What `handler`, a signal's handler, does with a stop held back."""
  if callable(handler):
    handler(num, frame)  # this module's handler, or Python's: KeyboardInterrupt
  elif handler == signal.SIG_DFL:
    signal.raise_signal(num)


@contextlib.contextmanager
def cancelled_when(event: threading.Event):
  """Within the block (in a worker thread), `check` raises `Cancelled` once `event` is set."""
  _worker.cancel = event
  try:
    yield
  finally:
    _worker.cancel = None


def quiet_drops(hook: Callable) -> Callable:
  """`hook` (a `sys.unraisablehook`) without Python's "Exception ignored" report of a
  dropped stop, which is not news: `check` raises it again."""
  def quiet(unraisable):
    if not (issubclass(unraisable.exc_type, KeyboardInterrupt) and _requested.is_set()):
      hook(unraisable)

  return quiet


@contextlib.contextmanager
def as_interrupts():
  """Within the block, Ctrl-C and SIGTERM go through `handler` (unless the program
  installed handlers of its own), and a stop that was dropped is raised at the latest on
  leaving it, without Python's "Exception ignored" report of the drop. A KeyboardInterrupt
  leaving the block has reached the caller: the flag is cleared. (Main thread only:
  elsewhere signals cannot be handled.)"""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
  installed = []
  previous_hook = sys.unraisablehook
  hook = sys.unraisablehook = quiet_drops(previous_hook)
  try:
    for sig, default in defaults.items():
      if signal.getsignal(sig) is default:
        installed.append((sig, default))
        signal.signal(sig, handler)
    check()  # dropped before the block
    yield
    check()  # dropped after the block's last check
  except KeyboardInterrupt:
    _requested.clear()
    raise
  finally:
    for sig, default in installed:
      if signal.getsignal(sig) is handler:  # not one the block installed itself
        signal.signal(sig, default)
    if sys.unraisablehook is hook:
      sys.unraisablehook = previous_hook

"""The one user-error type: what the commands report as one line, without a traceback."""


class UserError(ValueError):
  """A problem with what the user gave: a config value, a flag, a path, an architecture.

  A subclass of ValueError, so library callers may catch either. Anything else that goes
  wrong is a bug, and the commands show its traceback.
  """

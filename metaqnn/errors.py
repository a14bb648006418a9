"""The one user-error type: what the commands report as one line, without a traceback."""


class UserError(ValueError):
  """A problem with what the user gave: a config value, a flag, a path, an architecture.

  A subclass of ValueError, so library callers may catch either. The more specific ones
  are its subclasses: `architecture.ArchitectureError`, `budget.BudgetError`,
  `sources.DatasetError` (also `input_pipeline.DatasetError`) and `store.WorkdirError`.
  Besides these, a path that does not exist is an OSError (FileNotFoundError), and a
  search that cannot go on raises `search.SearchStalled` or `search.WorkersLost`
  (RuntimeErrors); the commands report all of them in one line. Anything else that goes
  wrong is a bug, and the commands show its traceback.
  """

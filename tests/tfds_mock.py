"""tensorflow-datasets' mock data for tests (also run as a preamble of the notebook test)."""

import functools


def mock_source_cls():
  """tfds.testing.PickableDataSourceMock with a working batched `__getitems__`.

  tfds 4.9.10's mock_data sets `return_value.__getitems__ = partial(_getitems, generator=...)`
  on a MagicMock. `__getitems__` is not one of the magic methods MagicMock binds, so the
  partial is stored as a plain attribute and called without the `self` that `_getitems`
  expects (TypeError: missing 'record_keys'). The real ArrayRecordDataSource works. This
  subclass (its child mocks, including return_value, are of the same class) binds the mock
  as `self` when the attribute is set. `__getitem__` is bound by MagicMock and needs no fix.
  """
  import tensorflow_datasets as tfds

  class BoundGetitemsMock(tfds.testing.PickableDataSourceMock):

    def __setattr__(self, attr, value):
      if attr == "__getitems__" and isinstance(value, functools.partial) and not value.args:
        value = functools.partial(value.func, self, **value.keywords)
      super().__setattr__(attr, value)

  return BoundGetitemsMock

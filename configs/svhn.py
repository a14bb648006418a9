"""MetaQNN on svhn with the paper's settings (SPEC sections 1, 2 and 4).

  python -m metaqnn.main --config=configs/svhn.py --workdir=/tmp/metaqnn_svhn

The full schedule is 2,700 unique models of 20 epochs each: days on one GPU.
"""

from metaqnn import config_lib


def get_config():
  config = config_lib.base_config("svhn")
  config.space.max_depth = 12
  config.dataset.preprocess = "mean"
  return config

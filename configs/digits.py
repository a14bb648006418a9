"""The embedded default: scikit-learn's 8x8 digits, offline, a whole search on a CPU.

  python -m metaqnn.main --config=configs/digits.py --workdir=/tmp/metaqnn_digits

The space is scaled to 8x8 inputs: bins at sides >= 4, 2..3 and 1, FC at side <= 3,
fewer and smaller filters, depth 8. The schedule keeps the paper's shape (most models at
epsilon 1.0, then ten steps down to 0.1) at a size a 2-core CPU finishes in minutes.
"""

from metaqnn import config_lib


def get_config():
  config = config_lib.base_config("digits")
  config.dataset.val_fraction = 0.2
  config.space.max_depth = 8
  config.space.conv_filters = (16, 32, 64)
  config.space.conv_kernels = (1, 3, 5)
  config.space.pools = ((3, 2), (2, 2))
  config.space.fc_units = (128, 64, 32)
  config.space.size_bins = (4, 2, 1)
  config.space.fc_max_side = 3
  config.search.schedule = (
      "1.0:60,0.9:6,0.8:6,0.7:6,0.6:8,0.5:8,0.4:8,0.3:8,0.2:8,0.1:8")
  config.train.batch_size = 32
  config.train.epochs = 8
  config.train.lr_decay_every = 3
  config.train.eval_batch_size = 512
  config.final.top = 5
  config.final.ensemble = 3
  config.final.epochs = 20
  return config

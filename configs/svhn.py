"""MetaQNN on svhn with the paper's settings (SPEC sections 1, 2 and 4).

  python -m metaqnn.main --config=configs/svhn.py --workdir=/tmp/metaqnn_svhn

The full schedule is 2,700 unique models of 20 epochs each: BENCHMARKS.md estimates
14-23 H200-hours for CIFAR-10's search (the final stage apart).
"""

from metaqnn import config_lib


def get_config():
  config = config_lib.base_config("svhn")
  config.space.max_depth = 12
  config.dataset.preprocess = "mean"
  # Final training as the paper reports it (SPEC section 4): train plus the 531,131
  # "extra" images (about 1.6 GB of uint8 in memory).
  config.dataset.final_extra = True
  config.final.schedule = "0.025:5,0.0125:5,0.0001:20,0.00001:10"
  config.final.optimizer = "sgd"
  return config

"""MetaQNN on cifar100 with the paper's settings (SPEC sections 1, 2 and 4).

  python -m metaqnn.main --config=configs/cifar100.py --workdir=/tmp/metaqnn_cifar100

The full schedule is 2,700 unique models of 20 epochs each: BENCHMARKS.md estimates
14-23 H200-hours for CIFAR-10's search (the final stage apart).
"""

from metaqnn import config_lib


def get_config():
  config = config_lib.base_config("cifar100")
  config.space.max_depth = 18
  # The paper names global contrast normalisation for the final phase and says nothing
  # of the search's inputs; one preprocessing for both (a data set has one) ranks the
  # candidates on the inputs their final training sees.
  config.dataset.preprocess = "gcn"
  # Final training as the paper reports it (SPEC section 4), with moderate augmentation.
  config.final.schedule = "0.025:40,0.0125:40,0.0001:160,0.00001:60"
  config.final.optimizer = "sgd"
  config.final.augment = True
  return config

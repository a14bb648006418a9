"""MetaQNN on mnist with the paper's settings (SPEC sections 1, 2 and 4).

  python -m metaqnn.main --config=configs/mnist.py --workdir=/tmp/metaqnn_mnist

The full schedule is 2,700 unique models of 20 epochs each: BENCHMARKS.md estimates
14-23 H200-hours for CIFAR-10's search (the final stage apart).
"""

from metaqnn import config_lib


def get_config():
  config = config_lib.base_config("mnist")
  config.space.max_depth = 12
  config.dataset.preprocess = "mean"
  # Final training: 40 epochs, learning rate x0.2 every 5 epochs (SPEC section 4).
  config.final.epochs = 40
  return config

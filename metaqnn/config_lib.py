"""Building blocks of the configs in `configs/`: the paper's defaults, in one place.

Each `configs/<name>.py` calls `base_config()` and overrides what differs, so a config
file reads as the list of ways its experiment departs from the paper.
"""

from __future__ import annotations

import ml_collections

from metaqnn import input_pipeline
from metaqnn.errors import UserError

# SPEC section 1: epsilon -> number of unique models trained at that epsilon.
PAPER_SCHEDULE = "1.0:1500,0.9:100,0.8:100,0.7:100,0.6:150,0.5:150,0.4:150,0.3:150,0.2:150,0.1:150"

# Image side, channels and classes of the data sets known by name; the registry itself
# (with their sources) is `input_pipeline.DATASETS`.
DATASETS = {name: {k: v for k, v in known.items() if k != "tfds"}
            for name, known in input_pipeline.DATASETS.items()}


def base_config(dataset: str) -> ml_collections.ConfigDict:
  """The paper's settings (SPEC sections 1, 2 and 4) for one of `DATASETS`, or for a data
  set of your own (`tfds:NAME`, `npz:PATH`, `folder:PATH`), whose image side, channels
  and classes are then 0: taken from the data when the search starts."""
  try:
    input_pipeline.source_of(dataset)
  except input_pipeline.DatasetError as e:
    raise UserError(str(e)) from None
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = dataset
  c.dataset.update(DATASETS.get(dataset, dict(image_size=0, channels=0, num_classes=0)))
  c.dataset.resize = False         # Resize every image to image_size (mixed sizes).
  c.dataset.data_dir = ""          # tensorflow-datasets directory; "" = tfds default.
  c.dataset.download = False       # Never touch the network unless asked.
  c.dataset.val_size = 5000        # Stratified validation examples (SPEC section 4).
  c.dataset.val_fraction = 0.0     # Used instead of val_size when > 0 (small data sets).
  c.dataset.train_fraction = 1.0   # Search on a stratified subset (stability study: 0.1).
  c.dataset.preprocess = "mean"    # "mean" (global mean subtraction) or "gcn".
  c.dataset.final_extra = False    # Final training adds tfds' "extra" split (SVHN).

  # SPEC section 2. Sizes are lower bounds of the representation-size bins, largest first.
  c.space = ml_collections.ConfigDict()
  c.space.max_depth = 12
  c.space.conv_filters = (64, 128, 256, 512)
  c.space.conv_kernels = (1, 3, 5)
  c.space.pools = ((5, 3), (3, 2), (2, 2))
  c.space.fc_units = (512, 256, 128)
  c.space.max_fc = 2
  c.space.size_bins = (8, 4, 1)     # () = derived from the image side (custom data).
  c.space.fc_max_side = 7          # FC only when every side in the bin is <= this.
  c.space.allow_gap = True

  c.agent = ml_collections.ConfigDict()
  c.agent.alpha = 0.01
  c.agent.gamma = 1.0
  c.agent.q_init = 0.5

  c.search = ml_collections.ConfigDict()
  c.search.schedule = PAPER_SCHEDULE
  c.search.replay_samples = 100
  c.search.max_crashes = 2         # Attempts at one candidate that may crash the process
                                   # (or lose its Ray worker) before it is recorded as
                                   # crashed (with Ray: lost); a kill -9 counts as one,
                                   # Ctrl-C does not.

  # Budgets (metaqnn/budget.py): hard limits, exact pruning, a soft reward. 0 = none.
  c.budget = ml_collections.ConfigDict()
  c.budget.max_params = 0          # Trainable parameters.
  c.budget.max_flops = 0           # Forward FLOPs per example (2 x multiply-adds).
  c.budget.over_budget_reward = 0.0  # What the agent learns from an over-budget sample.
  c.budget.prune = True            # Mask actions that can only lead over budget.
  c.budget.objective = ""          # "", "params" or "flops": reward accuracy *
  c.budget.target = 0.0            #   (cost / target) ** weight, capped at 1
  c.budget.weight = -0.07          #   (MnasNet's soft constraint).

  c.evaluator = "train"            # "train" or "synthetic".
  c.executor = "local"             # "local" (this machine) or "ray" (a Ray cluster).
  c.num_workers = 0                # Candidates evaluated at once. 0 = auto: with the train
                                   # evaluator on GPUs/TPUs 2 per device group (one compiles
                                   # while the other trains), else 1. 1 = strictly sequential
                                   # (a seed reruns bit for bit).
  c.parallel = "data"              # "data": each candidate data-parallel over the local
                                   # devices (as many as the batch sizes divide among);
                                   # "candidate": one candidate per device.
  c.compile_cache_dir = ""         # A folder for JAX's persistent compilation cache: on
                                   # GPUs it also keeps XLA's autotuning results, which
                                   # candidates share (their convolution shapes repeat),
                                   # and compiled programs for resumed runs. "" = off.
  c.ray = ml_collections.ConfigDict()
  c.ray.address = ""               # "" starts Ray on this machine; "auto" joins a cluster.
  c.ray.cpus_per_worker = 1
  c.ray.gpus_per_worker = 0        # Set to 1 (or more) on a GPU cluster.
  c.ray.worker_timeout = 0.0       # Seconds; a worker silent this long is killed and its
                                   # candidate counts as a crash. 0 = no limit.

  # SPEC section 4: training of each sampled network.
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.epochs = 20
  c.train.learning_rate = 1e-3
  c.train.lr_decay = 0.2
  c.train.lr_decay_every = 5
  c.train.adam_b1 = 0.9
  c.train.adam_b2 = 0.999
  c.train.adam_eps = 1e-8
  c.train.optimizer = "adam"       # The paper's; "sgd" (with momentum) also trains.
  c.train.momentum = 0.9           # SGD's only; Adam ignores it.
  c.train.weight_decay = 0.0       # The released code used 5e-4; the paper does not say.
  c.train.restart_lr_factor = 0.4
  c.train.max_restarts = 5
  c.train.restart_threshold = 0.0  # Restart below max(this, chance, the majority class's
                                   # share): 0 = chance or that share, whichever is higher.
  c.train.dropout = True
  c.train.augment = False          # Random mirror + translation up to 5 px (final training).
  c.train.eval_batch_size = 1000
  c.train.dtype = "auto"           # Compute precision: "auto" (bfloat16 on GPU/TPU, float32
                                   # on CPU), "float32" or "bfloat16". Params stay float32.
  c.train.max_seconds = 0.0        # Per-candidate time limit, checked between epochs (0 = none).

  # Early stopping of poor candidates (not in the paper; its authors' follow-up, Baker et
  # al. 2018, "Accelerating Neural Architecture Search using Performance Prediction").
  c.early_stop = ml_collections.ConfigDict()
  c.early_stop.kind = "none"       # "none" (the paper), "predictor" (nu-SVR on the first
                                   # epochs' curve and the architecture) or "median".
  c.early_stop.tau = 0.25          # Decide after this fraction of train.epochs (>= 1 epoch).
  c.early_stop.delta = 0.05        # Stop when P(final > best so far) < delta (predictor).
  c.early_stop.top = 1             # ... > the top-th best so far instead (predictor): 1 is
                                   # the follow-up paper; e.g. final.top spares more of the
                                   # models the final stage retrains.
  c.early_stop.min_completed = 20  # Fully trained models needed before any stopping.
  c.early_stop.refit_every = 10    # Refit the predictor after this many new models.
  c.early_stop.reward = "predicted"  # A stopped model's reward: "predicted" (the follow-up
                                     # paper) or "last" (its last observed accuracy).

  # The final stage (SPEC sections 1 and 4): top models retrained longer, then ensembled.
  c.final = ml_collections.ConfigDict()
  c.final.top = 10
  c.final.ensemble = 5
  c.final.run_after_search = True  # `metaqnn.main` runs it when the search finishes.
  c.final.schedule = ""            # "lr:epochs,..."; "" = learning_rate decayed as in train.
  c.final.epochs = 40
  c.final.learning_rate = 1e-3
  c.final.optimizer = "adam"       # "adam" or "sgd" (with momentum; where the paper gives
  c.final.momentum = 0.9           # Caffe-style rates such as 0.025, SGD is meant).
  c.final.weight_decay = 0.0       # "All other parameters unchanged" (paper, section 5):
                                   # the search's 0; the released final solvers used 5e-4.
  c.final.augment = False
  c.final.dtype = "auto"           # Precision of final training, as train.dtype.
  c.final.num_workers = 0          # Models trained at once; 0 = auto: 2 on multi-core CPUs,
                                   # else 1.
  c.final.plots = True             # Write the analysis plots when the search finishes.
  return c


def check_seed(config) -> None:
  """Refuses, in one line, a seed that NumPy's and JAX's generators do not take: they
  take 0..2**32-1 (a larger one failed every candidate, each recorded as an error)."""
  if not 0 <= int(config.seed) < 2**32:
    raise UserError(f"seed must be in 0..{2**32 - 1}, got {config.seed}")


def check_known(config) -> None:
  """Refuses, in one line, a config with a field that no setting has: a typo made in
  Python (`config.train.epoch = 1`) would otherwise be ignored, as the command line's
  `--config.x.y` overrides never are."""
  import difflib
  # Every data set's config has the same fields; a name no registry knows (data given
  # in memory may bear any) is not refused here.
  known = _fields(base_config("digits"))
  unknown = sorted(_fields(config) - known)
  if unknown:
    near = difflib.get_close_matches(unknown[0], known, n=1)
    raise UserError(f"unknown config field{'s' * (len(unknown) > 1)} {', '.join(unknown)}"
                    + (f" (did you mean {near[0]}?)" if near else "")
                    + "; the settings are in metaqnn/config_lib.py")


def _fields(config, prefix: str = "") -> set[str]:
  """The dotted names of `config`'s fields, groups (ConfigDicts) walked into."""
  out = set()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out |= _fields(value, f"{prefix}{key}.")
    else:
      out.add(prefix + key)
  return out

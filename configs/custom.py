"""MetaQNN on your own images: a tfds data set by name, a .npz file, or a folder of images.

  python -m metaqnn.main --config=configs/custom.py --workdir=DIR \
      --config.dataset.name=folder:/path/to/images
  python -m metaqnn.main --config=configs/custom.py --workdir=DIR \
      --config.dataset.name=npz:/path/to/data.npz
  python -m metaqnn.main --config=configs/custom.py --workdir=DIR \
      --config.dataset.name=tfds:fashion_mnist --config.dataset.data_dir=TFDS_DIR

Sources (`config.dataset.name`):
  tfds:NAME    any tensorflow-datasets image classification set, prepared as array_record
               (BUILD.md, "Preparing data sets"); image size, channels, classes and splits
               come from the builder's info.
  npz:PATH     arrays x_train [N, H, W, C] or [N, H, W] (grey), uint8; y_train [N] (or [N, 1],
               as keras.datasets gives them) integer labels 0..k-1; optionally x_val
               and y_val, x_test and y_test.
  folder:PATH  one subfolder per class (PATH/cat/*.png, PATH/dog/*.jpg), or tfds' ImageFolder
               layout PATH/train/<class>/ with optional PATH/validation/<class>/ (or
               val/, valid/) and PATH/test/<class>/, in any case. Read with Pillow (tfds' ImageFolder needs
               TensorFlow). Class i is the i-th folder name sorted as a
               string, as in tfds and torchvision: folders 0..11 give "10" the label 2.
               Files are taken by extension (any case: .png, .JPG, ...); names starting
               with "." and other files (Thumbs.db, README.txt) are skipped.
               16-bit images are scaled to 8 bits as x / 257, whatever range they use:
               12-bit data (0..4095, as microscopes and scanners write) keeps 17 grey
               levels, so stretch it to 0..65535 first.
The data's own validation split (tfds' "validation", validation/, val/ or valid/, x_val) is the
search's validation set; without one, val_fraction of train is carved out (stratified,
seeded by config.seed). A missing test split is carved out of train: a stratified 20%,
with a fixed seed.
PATH may be relative (and start with ~): it is recorded absolute, so that
`metaqnn.finalize` and `metaqnn.inspect` find the data whatever the current directory
(with metaqnn importable there: from the repository, or anywhere after
`pip install -e .`); to resume from another directory, give the same data by its
absolute path. The data must not change while a
search runs: a resume on other data (images added, say) is refused in one line.

image_size, channels and num_classes are 0 here: they are taken from the data when the
search starts (and stored with the record). Set one to have it checked against the data.
Images must all have one square size, unless resize=True: then each is resized to
image_size x image_size (bilinear), e.g. `--config.dataset.resize=True
--config.dataset.image_size=32`. For a folder, `--config.dataset.channels=1` (or 3) converts
every image to grey (or RGB); by default grey files (with or without alpha) give 1
channel, others 3 (an alpha channel is dropped).

The search space's size bins follow the image side (space.size_bins=(): (8, 4, 1) for 28
to 32 pixels and more, (4, 2, 1) for 8; see search_space.derived_bins). Errors are one
line and leave nothing behind: a wrong path, labels outside 0..k-1, mixed image sizes
without resize, images in a subfolder of a class folder, fewer training examples than a
batch, a single class. A class with fewer than 5 training examples and under 1% of the
mean per class is named in a warning (a stray label, most likely).

Budgets (see README, "Budgets"): e.g. `--config.budget.max_params=200000` or
`--config.budget.max_flops=5000000`. What the space holds on your data, to choose them by:
`python -m metaqnn.space costs --config=configs/custom.py --config.dataset.name=... --uniform`.
Under a tight budget, train long enough for small networks to converge (more
`train.epochs`, a later `train.lr_decay_every`): a short protocol favours large networks,
which learn fastest (BENCHMARKS.md, "Budgets").
"""

from metaqnn import config_lib


def get_config(name: str = "npz:data.npz"):
  """`name` may be given as `--config=configs/custom.py:folder:/path/to/images`."""
  config = config_lib.base_config(name)
  config.dataset.val_fraction = 0.2    # Custom sets are often small: a fraction, not 5000.
  config.space.max_depth = 8
  config.space.conv_filters = (16, 32, 64)
  config.space.fc_units = (128, 64, 32)
  config.space.size_bins = ()          # Derived from the image side.
  config.space.fc_max_side = 0         # Derived too.
  config.search.schedule = "1.0:60,0.9:6,0.8:6,0.7:6,0.6:8,0.5:8,0.4:8,0.3:8,0.2:8,0.1:8"
  config.train.batch_size = 32
  config.train.epochs = 8
  config.train.lr_decay_every = 3
  config.train.eval_batch_size = 512
  config.final.top = 5
  config.final.ensemble = 3
  config.final.epochs = 20
  return config

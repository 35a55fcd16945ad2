"""The Hydra configs, shipped inside the package (``pkg://scorelab.conf``): one group per
folder (data, path / sde, head, loss, backbone, sampler, guidance, autoencoder, metrics,
features, callbacks, logger, trainer, debug, paths, experiment, hydra). Add your own config
directories with ``hydra.searchpath=[file:///abs/dir]``: a file there with the same group and
name wins."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent

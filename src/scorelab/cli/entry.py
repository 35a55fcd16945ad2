"""The installed commands ``scorelab-train``, ``scorelab-sample``, ``scorelab-evaluate`` (and
the checkout's ``train.py`` / ``sample.py`` / ``evaluate.py``): Hydra entry points over the
configs shipped in the package, ``pkg://scorelab.conf``. A user's own config directories join
through ``hydra.searchpath=[file:///abs/dir]``."""

import hydra

CONFIGS = "pkg://scorelab.conf"


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="train")
def train(cfg):
    from scorelab.cli.train import main
    return main(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="sample")
def sample(cfg):
    from scorelab.cli.sample import main
    return main(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="evaluate")
def evaluate(cfg):
    from scorelab.cli.evaluate import main
    return main(cfg)

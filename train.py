"""python train.py [hydra overrides] — see README.md."""

import hydra

from scorelab.cli.train import main as _main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    return _main(cfg)


if __name__ == "__main__":
    main()

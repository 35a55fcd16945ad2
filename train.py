"""python train.py [hydra overrides] -- the checkout's spelling of ``scorelab-train`` (README.md)."""

from scorelab.cli.entry import train

if __name__ == "__main__":
    train()

"""python sample.py [hydra overrides] -- the checkout's spelling of ``scorelab-sample`` (README.md)."""

from scorelab.cli.entry import sample

if __name__ == "__main__":
    sample()

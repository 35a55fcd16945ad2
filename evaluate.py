"""python evaluate.py [hydra overrides] -- the checkout's spelling of ``scorelab-evaluate`` (README.md)."""

from scorelab.cli.entry import evaluate

if __name__ == "__main__":
    evaluate()

"""The Hydra edge: build objects from a composed config (``build``), the train / sample /
evaluate / summarize entry points, loggers, sweeps. Only here does a core ``ValueError``
become the one-line error that names the override.

Imports: anything in scorelab, Hydra, OmegaConf, Lightning.
"""

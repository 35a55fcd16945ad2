"""Training with Lightning: the LightningModules (diffusion; auxiliary classifier and
autoencoder), the losses, the learning-rate schedule, and the callbacks split by concern
(``callbacks/``: EMA, checkpoint + pre-emption, random states, sample grid).

Imports: torch, Lightning and every math package; never Hydra or ``scorelab.cli``.
"""

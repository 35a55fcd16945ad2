"""The model as samplers see it: prediction heads (eps, x0, v, score, edm, velocity), the one
prediction layer that converts between them on any path (``Prediction``), ``ScoreModel``
(backbone + head + path), class conditioning (the null label and label dropout), the
noise-conditional classifier and the Gaussian-mixture oracle (an exact model).

Imports: torch, ``scorelab.paths`` and ``scorelab.util.checks`` only (math core).
"""

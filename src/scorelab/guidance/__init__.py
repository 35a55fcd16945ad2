"""Guidance and controllable generation, both as ways to build a prediction from others:
classifier-free guidance, classifier guidance and autoguidance (``predictions``); inpainting
and colorization with any sampler (``controllable``).

Imports: torch, ``scorelab.models``, ``scorelab.sampling`` and ``scorelab.util.checks`` only
(math core).
"""

"""Backbones: the DDPM++ / NCSN++ UNet family (``unet``), DiT (``dit``), an MLP for toy data
(``mlp``), the classifier encoder (``encoder``) and their shared layers. A backbone knows
nothing of paths or prediction types: it maps (input, noise label, class) to an output.

Imports: torch only (and ``scorelab.models.conditioning`` for the null label).
"""

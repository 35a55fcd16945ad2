"""Latent spaces: ``LatentSpace`` (encode / decode with a normalisation), the KL autoencoder
network, the adapter for diffusers' pretrained autoencoders, and the DataModule that trains
on cached latents.

Imports: torch, ``scorelab.nets`` and ``scorelab.data`` (the latent DataModule, Lightning);
diffusers only inside ``diffusers`` when used. Never Hydra or ``scorelab.cli``.
"""

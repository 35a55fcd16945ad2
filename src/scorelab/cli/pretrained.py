"""The ``model`` group of sample.py and evaluate.py: a published network in place of a
checkpoint (``scorelab.adapters``).

    python sample.py model=diffusers model.pretrained=DIR_OR_HUB_ID [model.subfolder=unet]
        [model.local_files_only=true] [model.timestep_input=interpolated|nearest]
        [model.scheduler=DIR]
    python evaluate.py model=diffusers model.pretrained=... data=<dataset> metrics=[fid] ...

``LoadedPretrained`` has the attributes of ``LoadedCheckpoint`` that the commands read, so
every sampler, guidance, task and metric takes it unchanged.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from scorelab.adapters import AdapterUnavailable, load_diffusers
from scorelab.cli.build import given, make, plain, sampler_settings
from scorelab.cli.latent import pretrained_latent
from scorelab.paths.discrete import TIMESTEP_INPUTS
from scorelab.training.diffusion_module import DiffusionModule
from scorelab.training.losses import DSMLoss
from scorelab.util.checks import Rule, boolean, check_values, one_of, optional
from scorelab.util.errors import ConfigError

SOURCES = ("diffusers",)
RULES = {"source": one_of(SOURCES, "pretrained model source"),
         "local_files_only": boolean(),
         "timestep_input": one_of(TIMESTEP_INPUTS, "timestep input"),
         "clip_x0": optional(boolean()),
         "subfolder": optional(Rule(lambda v: isinstance(v, str), "a folder name")),
         "scheduler": optional(Rule(lambda v: isinstance(v, str), "a directory or hub id"))}
# DiT's label embedding always keeps a null row, trained with class dropout 0.1 (Peebles &
# Xie 2023), and Stable Diffusion dropped 10 % of its captions: classifier-free guidance
# applies to both (the module's p_uncond says that the model knows its null condition).
CLASS_DROPOUT = 0.1


def weights_of(loaded) -> dict:
    """What result files say of the weights: EMA or raw of a checkpoint, or where a
    published network came from."""
    if isinstance(loaded, LoadedPretrained):
        return {"weights": "pretrained", "pretrained": loaded.description}
    return {"weights": "ema" if loaded.ema else "raw"}


def model_source(cfg) -> str:
    """"checkpoint" (``ckpt=PATH``) or "pretrained" (``model=diffusers``), one of them."""
    model = cfg.get("model")
    if model is not None and not OmegaConf.is_dict(model):
        raise ConfigError(f"model={model} is what train.py trains; sample.py and evaluate.py "
                          f"read ckpt=PATH, or model=diffusers model.pretrained=DIR")
    has_model = model is not None
    has_ckpt = given({"ckpt": cfg.get("ckpt")}, "ckpt") is not None
    if has_model == has_ckpt:
        raise ConfigError("give ckpt=PATH (a scorelab checkpoint) or model=diffusers "
                          "model.pretrained=DIR (a published network), exactly one" if has_model
                          else "no model: give ckpt=PATH (a scorelab checkpoint) or "
                               "model=diffusers model.pretrained=DIR (a published network)")
    return "pretrained" if has_model else "checkpoint"


class LoadedPretrained:
    """A published network as a loaded checkpoint: ``module`` (a ``DiffusionModule`` around
    the adapted ``ScoreModel``), ``cfg`` (its data, for evaluate.py's datamodule),
    ``data_shape``, ``num_classes``, ``is_image``, ``path`` (where the weights came from).

    Args:
        node: the ``model`` config node (``conf/model/diffusers.yaml``).
        data: the ``data`` config node (evaluate.py's held-out split and reference
            statistics) or None.
        autoencoder: the ``autoencoder`` node: a latent model's pretrained VAE
            (``autoencoder=diffusers``, its scaling factor), or None / source none.
    """

    kind = "diffusion"
    global_step = 0
    ema = False           # a published network's weights are whatever it published

    def __init__(self, node, data=None, autoencoder=None):
        s = plain(node)
        try:
            check_values("model", {k: v for k, v in s.items() if k in RULES}, RULES)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        pretrained = given(s, "pretrained")
        if pretrained is None:
            raise ConfigError("model.pretrained: not given (a local diffusers pipeline "
                              "directory or a Hugging Face hub id)")
        try:
            adapted = load_diffusers(str(pretrained), s.get("subfolder"),
                                     bool(s.get("local_files_only", False)),
                                     s.get("timestep_input", "interpolated"), s.get("scheduler"),
                                     s.get("clip_x0"))
        except AdapterUnavailable as e:
            raise ConfigError(str(e)) from None
        if adapted.takes_text and adapted.tokenizer is None:
            raise ConfigError(f"model.pretrained={pretrained}: a UNet2DConditionModel reads "
                              f"prompts through its pipeline's tokenizer/ and text_encoder/, "
                              f"which are not there; from Python: adapters.load_diffusers(...)"
                              f".model with y=<prompt embeddings>")
        self.tokenizer = adapted.tokenizer
        self.description = adapted.description
        self.path = f"diffusers:{pretrained}"
        latent = pretrained_latent(autoencoder, adapted.data_shape)
        # the images' shape (a latent model's: the VAE's pixels)
        self.data_shape = tuple(adapted.data_shape if latent is None else latent.data_shape)
        self.num_classes = adapted.num_classes
        self.is_image = True
        dit = adapted.model.backbone.is_dit and self.num_classes > 0
        model = adapted.model
        try:
            sampler = sampler_settings(adapted.default_sampler, model.path, model)
        except ConfigError:
            sampler = None      # DiffusionModule's default, which runs on every path
        self.module = DiffusionModule(
            model, DSMLoss(), optimizer=None, data_shape=adapted.data_shape,
            num_classes=self.num_classes, is_image=True,
            conditional=self.num_classes > 0 or self.tokenizer is not None,
            p_uncond=CLASS_DROPOUT if (dit or self.tokenizer is not None) else 0.0,
            sampler=sampler, config={"model": "diffusers", "pretrained": self.description},
            latent=latent, tokenizer=self.tokenizer)
        self.module.eval()
        # resolved here: their interpolations (data.root: ${paths.data_dir}) name the run's
        # config, which this one is not
        self.cfg = OmegaConf.create({"data": plain(data) if data is not None else None,
                                     "model": "diffusers",
                                     "autoencoder": plain(autoencoder) if latent is not None
                                     else None})
        if data is not None:
            self._check_data()

    def _check_data(self) -> None:
        """The dataset must be what the network takes: its image shape."""
        shape = tuple(make(self.cfg, "data").shape)
        if shape != self.data_shape:
            raise ConfigError(f"data: images {list(shape)}, but model.pretrained="
                              f"{self.description['pretrained']} takes "
                              f"{list(self.data_shape)}")

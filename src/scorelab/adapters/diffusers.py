"""A diffusers network and its scheduler config as a scorelab ``ScoreModel``
(``pip install 'scorelab[diffusers]'``).

    network    UNet2DModel (DDPM, ADM-style), UNet2DConditionModel (Stable Diffusion: caption
               token ids through the pipeline's own CLIP tokenizer and text model, or the
               prompt embedding itself as y), DiTTransformer2DModel (and the
               Transformer2DModel DiT configs: class labels, learned sigma)
    scheduler  DDPM / DDIM / PNDM / DPM-Solver / UniPC / DEIS / Euler / Heun / LMS (a discrete
               VP schedule: ``beta_schedule`` linear | scaled_linear | squaredcos_cap_v2, or
               ``trained_betas``; ``num_train_timesteps``) -> ``paths.discrete.DiscreteVPPath``;
               FlowMatchEuler / FlowMatchHeun -> ``paths.discrete.TimestepLinearPath``
    prediction epsilon -> eps head, v_prediction -> v, sample -> x0; a flow scheduler's
               network predicts the velocity noise - x0 (the velocity head on sigma = t)

The network sees x_t unscaled (``input_scaling=False``: the diffusers models were trained on
x_t itself) and the path's timestep input (``noise_label``: the training timestep, fractional
or nearest, or N sigma for flow models). A learned-variance network (2C output channels: DiT,
guided-diffusion) has its variance fraction (v + 1) / 2 split off by ``ScoreModel``, as
Improved DDPM defines it. A class-conditional DiT's null class is its last embedding row
(``num_embeds_ada_norm``), where scorelab's ``NULL_LABEL`` goes, so classifier-free guidance
uses the model's own null class. Where the scheduler config sets ``clip_sample`` (DDPM's
and DDIM's default), x0_hat is clamped to ``clip_sample_range`` with eps_hat re-derived, in
every sampler, as DDPM's pipeline does (``clip_x0`` overrides it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from scorelab.models.conditioning import NULL_LABEL
from scorelab.models.text import null_captions
from scorelab.models.heads import get_head
from scorelab.models.score import ScoreModel
from scorelab.paths.discrete import (BETA_SCHEDULES, TIMESTEP_INPUTS, DiscreteVPPath,
                                     TimestepLinearPath, alphas_cumprod, scheduler_betas)
from scorelab.util.errors import ScorelabError


class AdapterUnavailable(ScorelabError):
    """The diffusers extra is missing, the network or its scheduler cannot be read, or they
    are of a kind the adapter does not know."""


# VP schedulers whose inference timesteps ``paths.discrete.scheduler_timesteps`` reproduces
# (how they space them) and their default ``timestep_spacing``
SPACING_STYLES = {"DDPMScheduler": "single", "DDIMScheduler": "single",
                  "DPMSolverMultistepScheduler": "multistep",
                  "UniPCMultistepScheduler": "multistep", "DEISMultistepScheduler": "multistep"}
DEFAULT_SPACING = {"DDPMScheduler": "leading", "DDIMScheduler": "leading",
                   "DPMSolverMultistepScheduler": "linspace",
                   "UniPCMultistepScheduler": "linspace", "DEISMultistepScheduler": "linspace"}
# VP schedulers whose schedule is read (grid=scheduler is not reproduced for them)
OTHER_VP_SCHEDULERS = ("PNDMScheduler", "EulerDiscreteScheduler",
                       "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                       "LMSDiscreteScheduler", "KDPM2DiscreteScheduler",
                       "KDPM2AncestralDiscreteScheduler", "DPMSolverSinglestepScheduler",
                       "DPMSolverSDEScheduler")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
SCHEDULERS = tuple(SPACING_STYLES) + OTHER_VP_SCHEDULERS + FLOW_SCHEDULERS
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
NETWORKS = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "Transformer2DModel")
NETWORK_FOLDERS = ("unet", "transformer")


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise AdapterUnavailable("model=diffusers needs the diffusers package: pip install "
                                 "'scorelab[diffusers]'") from None
    return diffusers


def scheduler_path(config: dict, timestep_input: str = "interpolated"):
    """(path, head name) of a diffusers scheduler config (its ``_class_name`` and settings)."""
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise AdapterUnavailable(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    if timestep_input not in TIMESTEP_INPUTS:
        raise AdapterUnavailable(f"model.timestep_input={timestep_input}: must be one of "
                                 f"{', '.join(TIMESTEP_INPUTS)}")
    N = int(config.get("num_train_timesteps", 1000))
    if name in FLOW_SCHEDULERS:
        if config.get("use_dynamic_shifting"):
            raise AdapterUnavailable(f"{name} with use_dynamic_shifting (a resolution-dependent "
                                     f"shift, Flux) is not supported: its shift needs mu")
        if config.get("invert_sigmas"):
            raise AdapterUnavailable(f"{name} with invert_sigmas is not supported")
        return TimestepLinearPath(N, float(config.get("shift", 1.0))), "velocity"
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise AdapterUnavailable(
            f"{name}: unknown prediction_type {prediction!r}; known: "
            f"{', '.join(PREDICTION_TYPES)} (flow models: a FlowMatch scheduler)")
    if config.get("rescale_betas_zero_snr"):
        raise AdapterUnavailable(f"{name} with rescale_betas_zero_snr (zero terminal SNR) is "
                                 f"not supported")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
    else:
        schedule = config.get("beta_schedule", "linear")
        if schedule not in BETA_SCHEDULES:
            raise AdapterUnavailable(f"{name}: unknown beta_schedule {schedule!r}; known: "
                                     f"{', '.join(BETA_SCHEDULES)}")
        betas = scheduler_betas(schedule, N, float(config.get("beta_start", 1e-4)),
                                float(config.get("beta_end", 0.02)))
    if name in ("DDIMScheduler", "PNDMScheduler"):
        final_clean = bool(config.get("set_alpha_to_one", name == "DDIMScheduler"))
    else:
        final_clean = config.get("final_sigmas_type", "zero") == "zero"
    path = DiscreteVPPath(alphas_cumprod(betas), timestep_input,
                          spacing=config.get("timestep_spacing") or DEFAULT_SPACING.get(name,
                                                                                      "leading"),
                          steps_offset=int(config.get("steps_offset", 0)),
                          spacing_style=SPACING_STYLES.get(name), final_clean=final_clean)
    return path, PREDICTION_TYPES[prediction]


class DiffusersNetwork(nn.Module):
    """A diffusers network as a scorelab backbone: ``forward(x, label, y=None)``.

    y: class labels [B] (``NULL_LABEL``: the null class) for a class-conditional network; for
    a ``UNet2DConditionModel`` caption token ids [B, L] read by ``text_encoder`` (its
    pipeline's CLIP text model, ``models.clip_text.ClipTextEncoder``: the null caption is
    CLIP's encoding of "", Stable Diffusion's unconditional input) or the prompt embedding
    [B, L, D] itself."""

    def __init__(self, net: nn.Module, class_name: str, text_encoder: nn.Module | None = None):
        super().__init__()
        self.text_encoder = text_encoder
        if class_name not in NETWORKS:
            raise AdapterUnavailable(f"unknown network {class_name!r}; known: "
                                     f"{', '.join(NETWORKS)}")
        config = net.config
        self.net, self.class_name = net, class_name
        self.is_dit = class_name == "DiTTransformer2DModel" or (
            class_name == "Transformer2DModel" and config.get("norm_type") == "ada_norm_zero")
        if class_name == "Transformer2DModel" and not self.is_dit:
            raise AdapterUnavailable("a Transformer2DModel that is not a DiT (norm_type "
                                     "ada_norm_zero) is not supported")
        self.takes_text = class_name == "UNet2DConditionModel"
        in_ch = int(config.in_channels)
        out_ch = int(config.get("out_channels") or in_ch)
        self.learn_sigma = out_ch == 2 * in_ch
        if out_ch not in (in_ch, 2 * in_ch):
            raise AdapterUnavailable(f"{class_name} outputs {out_ch} channels for {in_ch} in: "
                                     f"neither a prediction nor one with learned variances")
        if self.is_dit:
            self.num_classes = int(config.get("num_embeds_ada_norm") or 0)
        elif class_name == "UNet2DModel":
            self.num_classes = int(config.get("num_class_embeds") or 0)
        else:
            self.num_classes = 0
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.data_shape = (in_ch, *size)

    def forward(self, x: Tensor, label: Tensor, y: Tensor | None = None) -> Tensor:
        if self.takes_text:
            if self.text_encoder is not None and (y is None or not y.is_floating_point()):
                if y is None:           # the unconditional model: the empty caption
                    y = null_captions(x.shape[0], self.text_encoder.context, x.device)
                y = self.text_encoder(y)[0]
            if y is None:
                raise ValueError("a UNet2DConditionModel needs its prompt embedding as y "
                                 "(encoder_hidden_states [B, L, D]), or its pipeline's "
                                 "tokenizer and text encoder for token ids")
            return self.net(x, label, encoder_hidden_states=y.to(x.dtype)).sample
        if self.is_dit:
            # its null class is the row after the classes (DiT's label dropout)
            y = torch.full((x.shape[0],), NULL_LABEL, device=x.device) if y is None else y
            y = torch.where(y == NULL_LABEL, self.num_classes, y.long())
            return self.net(x, timestep=label, class_labels=y).sample
        if self.num_classes:
            if y is None or bool((y == NULL_LABEL).any()):
                raise ValueError("this class-conditional UNet2DModel has no null class: it "
                                 "needs a class label for every sample (no classifier-free "
                                 "guidance)")
            return self.net(x, label, class_labels=y.long()).sample
        return self.net(x, label).sample


@dataclass
class PretrainedModel:
    """A wrapped network: the ``ScoreModel`` and what sampling it needs to know."""
    model: ScoreModel
    data_shape: tuple
    num_classes: int
    takes_text: bool
    description: dict = field(default_factory=dict)
    # a text network's tokenizer (``ClipTokenizer.state_dict()``) when its pipeline has one:
    # then y is caption token ids
    tokenizer: dict | None = None

    @property
    def default_sampler(self) -> dict:
        """The scheduler's own kind of loop: DPM-Solver++ (2M) in 20 steps on the
        scheduler's timesteps (VP), Euler in 28 on its sigmas (flow)."""
        grid = {"grid": "scheduler"} if self.model.path.reproduces_scheduler else {}
        if self.model.head.name == "velocity":
            return {"name": "ode", "steps": 28, "method": "euler", **grid}
        return {"name": "dpm_solver", "steps": 20, **grid}


def score_model_from_diffusers(net: nn.Module, class_name: str, scheduler_config: dict,
                               timestep_input: str = "interpolated",
                               description: dict | None = None,
                               clip_x0: bool | None = None, text=None) -> PretrainedModel:
    """The ``ScoreModel`` of a diffusers network (of class ``class_name``) trained with the
    scheduler ``scheduler_config``. ``clip_x0``: clamp x0_hat to the scheduler's
    ``clip_sample_range`` with eps_hat re-derived (``Prediction.clip_x0``) in every sampler;
    None: as the scheduler config's ``clip_sample`` says (DDPM's and DDIM's default: on).
    ``text``: (``ClipTokenizer``, ``ClipTextEncoder``) of a text network's pipeline."""
    path, head_name = scheduler_path(scheduler_config, timestep_input)
    backbone = DiffusersNetwork(net, class_name, text[1] if text else None)
    if clip_x0 is None:
        clip_x0 = bool(scheduler_config.get("clip_sample", False))
    x0_clip = float(scheduler_config.get("clip_sample_range", 1.0)) if clip_x0 else None
    model = ScoreModel(backbone, get_head(head_name), path, input_scaling=False,
                       noise_label="sde", x0_clip=x0_clip)
    about = {"source": "diffusers", "network": class_name,
             "scheduler": scheduler_config.get("_class_name"), "head": head_name,
             "num_train_timesteps": path.N, "timestep_input": timestep_input,
             "x0_clip": x0_clip, **(description or {})}
    if head_name != "velocity":
        about["beta_schedule"] = "trained_betas" if scheduler_config.get("trained_betas") \
            else scheduler_config.get("beta_schedule", "linear")
    else:
        about["shift"] = path.shift
    return PretrainedModel(model.eval(), backbone.data_shape, backbone.num_classes,
                           backbone.takes_text, about,
                           text[0].state_dict() if text else None)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _read_config(cls, source: str, subfolder: str | None, local_files_only: bool):
    try:
        return dict(cls.load_config(source, subfolder=subfolder,
                                    local_files_only=local_files_only))
    except (OSError, ValueError, EnvironmentError, json.JSONDecodeError):
        return None


def _first_config(cls, source: str, folders, local_files_only: bool):
    """(config, folder) of the first of ``folders`` in ``source`` that holds ``cls``'s config
    file ((None, None) if none does)."""
    for folder in folders:
        config = _read_config(cls, source, folder, local_files_only)
        if config is not None:
            return config, folder
    return None, None


def load_diffusers(pretrained: str, subfolder: str | None = None,
                   local_files_only: bool = False, timestep_input: str = "interpolated",
                   scheduler: str | None = None, clip_x0: bool | None = None
                   ) -> PretrainedModel:
    """The network of a diffusers pipeline directory or hub id (``subfolder``: where the
    network is; default: ``unet``, then ``transformer``, then the top level) with the
    scheduler config of its ``scheduler`` folder (``scheduler``: another directory or hub id
    holding a ``scheduler_config.json``); ``clip_x0`` as ``score_model_from_diffusers``."""
    diffusers = _diffusers()
    local = Path(pretrained).expanduser()
    source = str(local) if local.is_dir() else pretrained
    where = "the local directory" if local.is_dir() else \
        "not a local directory, and the Hugging Face hub could not provide it (offline?)"
    folders = [subfolder] if subfolder else list(NETWORK_FOLDERS) + [None]
    net_config, folder = _first_config(diffusers.UNet2DModel, source, folders,
                                       local_files_only)
    if net_config is None:
        tried = " or ".join(f"{f}/config.json" if f else "config.json" for f in folders)
        raise AdapterUnavailable(f"model.pretrained={pretrained}: no network config ({tried}) "
                                 f"found: {where}")
    class_name = net_config.get("_class_name")
    if class_name not in NETWORKS:
        raise AdapterUnavailable(f"model.pretrained={pretrained}: the network is a "
                                 f"{class_name}; known: {', '.join(NETWORKS)}")
    sched_config, _ = _first_config(diffusers.DDPMScheduler, scheduler or source,
                                    (None,) if scheduler else ("scheduler", None),
                                    local_files_only)
    if sched_config is None:
        raise AdapterUnavailable(
            f"model.pretrained={pretrained}: no scheduler config (scheduler/"
            f"scheduler_config.json) next to the network; a pipeline saved with "
            f"save_pretrained has one, or give model.scheduler=DIR")
    try:
        # (low_cpu_mem_usage needs accelerate, which scorelab does not install)
        net = getattr(diffusers, class_name).from_pretrained(
            source, subfolder=folder, local_files_only=local_files_only,
            low_cpu_mem_usage=False)
    except (OSError, ValueError, EnvironmentError) as e:
        raise AdapterUnavailable(f"model.pretrained={pretrained}: the {class_name} did not "
                                 f"load: {_first_line(e)}") from None
    about = {"pretrained": str(pretrained), "subfolder": folder}
    if scheduler:
        about["scheduler_from"] = str(scheduler)
    text = None
    if class_name == "UNet2DConditionModel" and _has_config(
            diffusers.UNet2DModel, source, "text_encoder", local_files_only):
        text = pipeline_text_encoder(source, local_files_only)
        about["text_encoder"] = "text_encoder"
    return score_model_from_diffusers(net, class_name, sched_config, timestep_input, about,
                                      clip_x0, text)


def _has_config(cls, source: str, subfolder: str, local_files_only: bool) -> bool:
    """Whether ``source`` has a ``<subfolder>/config.json``."""
    local = Path(source)
    if local.is_dir():
        return (local / subfolder / "config.json").is_file()
    return _read_config(cls, source, subfolder, local_files_only) is not None


def pipeline_text_encoder(source: str, local_files_only: bool = False):
    """(``ClipTokenizer``, ``ClipTextEncoder``) of a Stable Diffusion style pipeline: its
    ``tokenizer`` and ``text_encoder`` folders (``pip install 'scorelab[text]'``)."""
    from scorelab.models.clip_text import ClipTextEncoder, ClipTokenizer, TextEncoderUnavailable
    try:
        tokenizer = ClipTokenizer.from_pretrained(source, None, local_files_only,
                                                  tokenizer_subfolder="tokenizer",
                                                  model_subfolder="text_encoder")
        encoder = ClipTextEncoder(tokenizer.model_config, tokenizer.context, tokenizer.empty(),
                                  source, local_files_only, subfolder="text_encoder")
    except TextEncoderUnavailable as e:
        raise AdapterUnavailable(f"the pipeline's text encoder: {e}") from None
    return tokenizer, encoder

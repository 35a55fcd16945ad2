"""DiffusionModule: the LightningModule around a ScoreModel and a denoising loss."""

from __future__ import annotations

import math
from typing import Callable

import lightning as L
import torch

from scorelab.util.checks import check_value, one_of
from scorelab.models.conditioning import check_p_uncond, drop_labels
from scorelab.util.errors import NonFiniteLossError
from scorelab.training.losses import DenoisingLoss
from scorelab.likelihood.reverse_step import X0Variance
from scorelab.sampling import DEFAULT_SAMPLER, SampleResult, sample, time_grid
from scorelab.models.score import ScoreModel
from scorelab.util.speed import fused_optimizer


LR_DECAYS = ("none", "cosine", "linear")
LR_DECAY_RULE = one_of(LR_DECAYS, "learning-rate decay")


def lr_factor(step: int, warmup: int, total: int, decay: str = "none") -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear warm-up over ``warmup``
    steps, then 1 ("none"), or a cosine / linear decay that reaches 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "none":
        return 1.0
    progress = min(1.0, (step - warmup + 1) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress


def with_lr_schedule(module: L.LightningModule, opt, warmup: int, decay: str):
    """Lightning's ``configure_optimizers`` answer: ``opt`` with the per-step ``lr_factor``
    schedule (or alone when constant)."""
    if warmup <= 0 and decay == "none":
        return opt
    # the run's length in optimizer steps (from max_steps, or max_epochs x batches)
    total = module.trainer.estimated_stepping_batches if module._trainer is not None else 0
    if decay != "none" and not 0 < total < float("inf"):
        raise ValueError(f"optim.lr_decay={decay} needs a run of known length "
                         f"(trainer.max_steps or trainer.max_epochs)")
    total = int(total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, warmup, total, decay))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def dataset_examples(module, data, dataset, num: int, seed: int = 0):
    """The first ``num`` examples of ``dataset`` as ``module``'s model sees them, and their
    labels (x, y): a latent model's are one posterior draw each from ``seed``, the same on
    every process."""
    n = min(num, len(dataset))
    if module.latent is None:
        x = torch.stack([dataset[i][0] for i in range(n)]).to(module.device)
    else:
        gen = torch.Generator(device=module.device).manual_seed(seed)
        x = module.model_input(data.posteriors(dataset, range(n)).to(module.device), gen)
    y = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(n)]).to(module.device)
    return x, y


class DiffusionModule(L.LightningModule):
    """A non-finite training loss stops the run with ``NonFiniteLossError`` and never reaches
    the weights: checked before each optimizer step, or, with a fused optimiser (the GPU
    default), skipped on the device and reported within ``NAN_CHECK_EVERY`` steps.

    Args:
        model: the ScoreModel (backbone + head + SDE) being trained.
        loss: a ``scorelab.training.losses`` loss; checked against the SDE here.
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_``).
        data_shape: shape of one sample.
        num_classes: classes of the dataset (0 if unlabelled).
        is_image: whether samples are images in [-1, 1] (for saving and metrics).
        conditional: feed class labels to the backbone.
        p_uncond: probability of replacing a training label by the null label (label
            dropout for classifier-free guidance; conditional models only).
        warmup_steps: linear learning-rate warm-up from 0 (Score SDE: 5000).
        lr_decay: after the warm-up, "none" (constant), "cosine" or "linear" decay to 0 at
            the end of the run (``trainer.estimated_stepping_batches``).
        sampler: default sampler settings for ``sample()``: {"name": ..., "steps": ..., **options}.
        config: the composed run config as a plain dict, stored in every checkpoint.
        fused_optimizer: ask the optimiser for fused kernels (true / false / "auto": when
            the parameters are on a GPU).
        latent: a ``scorelab.latent.space.LatentSpace`` (latent diffusion): batches are posteriors
            of its frozen autoencoder, ``data_shape`` is its latent shape, and ``sample()``
            decodes to pixels. Its weights, shift and scale are part of the module's state,
            so a checkpoint samples without the stage-1 file.
        tokenizer: a captioned dataset's ``WordTokenizer.state_dict()`` (conditional on
            text: y holds token ids); stored in the checkpoint, so prompts need no data.
    """

    NAN_CHECK_EVERY = 50
    # training examples behind sampler.variance=analytic's moments (Bao et al. use a few
    # hundred to a thousand; their estimate's error is a few percent at 256)
    ANALYTIC_EXAMPLES = 256

    def __init__(self, model: ScoreModel, loss: DenoisingLoss,
                 optimizer: Callable[..., torch.optim.Optimizer], data_shape,
                 num_classes: int = 0, is_image: bool = True, conditional: bool = False,
                 warmup_steps: int = 0, sampler: dict | None = None, config: dict | None = None,
                 fused_optimizer: bool | str = "auto", lr_decay: str = "none",
                 p_uncond: float = 0.0, latent=None, tokenizer: dict | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.latent = latent
        self.p_uncond = check_p_uncond(p_uncond)
        self.guidance = None       # a ``scorelab.guidance.predictions`` object used by ``sample()``
        check_value("optim.lr_decay", lr_decay, LR_DECAY_RULE)
        self.lr_decay = lr_decay
        loss.check(model.path, model.head)
        loss.check_model(model)
        # the bound's decoder: 8-bit bins for images in pixel space, a density otherwise
        loss.decoder_bins = 256 if is_image and latent is None else None
        self.model = model
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.data_shape = tuple(data_shape)
        self.num_classes = int(num_classes)
        self.is_image = bool(is_image)
        self.conditional = conditional
        self.warmup_steps = int(warmup_steps)
        self.sampler = dict(sampler or DEFAULT_SAMPLER)
        self.config = config or {}
        self.fused_optimizer = fused_optimizer
        self._guarded_optimizer = None     # a fused optimiser that skips non-finite steps
        self._nonfinite = None             # device-side count of skipped steps
        self.analytic_data = None          # the data module analytic variances are estimated on
        self._analytic_cache: tuple | None = None
        self.epoch_losses: list[float] = []   # mean training loss of each finished epoch
        self._loss_sum = None
        self._loss_count = 0

    def _labels(self, y):
        return y if self.conditional else None

    @property
    def pixel_shape(self) -> tuple:
        """One sample's shape in data space (``data_shape`` unless latent)."""
        return self.data_shape if self.latent is None else self.latent.data_shape

    def model_input(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """A batch as the diffusion sees it: x itself, or for a latent model the normalised
        z ~ q(z|x) drawn from the batch's posteriors."""
        return x if self.latent is None else self.latent.draw(x, generator)

    def training_step(self, batch, batch_idx):
        x, y, *coupled = batch          # (reflow's pairs also carry their noise)
        x = self.model_input(x)
        y = drop_labels(y, self.p_uncond) if self.conditional else None
        at_step = getattr(self.loss_fn, "at_step", None)
        if at_step is not None:        # (a curriculum over the run: consistency training)
            at_step(self.global_step, self._run_length())
        if coupled:
            loss = self.loss_fn(self.model, x, y, noise=coupled[0])
        else:
            loss = self.loss_fn(self.model, x, y)
        detached = loss.detach()
        if self._guarded_optimizer is None and not torch.isfinite(detached):
            # Checked before the optimizer step, so a NaN never reaches the weights.
            self._raise_nonfinite(f"training loss is {detached.item()} at step "
                                  f"{self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._loss_count += 1
        return loss

    def _run_length(self) -> int:
        """The run's length in optimizer steps (max_steps, or max_epochs x batches)."""
        if self._trainer is None:
            return 1
        total = self.trainer.estimated_stepping_batches
        return int(total) if 0 < total < float("inf") else max(1, self.global_step + 1)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None):
        """Clipping as configured; with a fused optimiser the same gradient norm also tells
        the fused kernel to skip a non-finite step on the device (``found_inf``, the
        GradScaler protocol), so a NaN never reaches the weights without a host sync per
        step. The norm is taken after DDP's all-reduce, so every rank skips together; the
        count is read every NAN_CHECK_EVERY steps."""
        if self._guarded_optimizer is None or gradient_clip_algorithm == "value":
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)
            if self._guarded_optimizer is None:
                return
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if gradient_clip_val and gradient_clip_algorithm != "value":
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        bad = (~torch.isfinite(norm)).float()
        self._guarded_optimizer.found_inf = bad
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad

    @staticmethod
    def _raise_nonfinite(what: str):
        raise NonFiniteLossError(f"{what}; lower optim.lr, raise trainer.gradient_clip_val or "
                                 f"check the data for NaNs")

    def _check_skipped_steps(self):
        if self._nonfinite is not None and int(self._nonfinite) > 0:
            self._raise_nonfinite(
                f"gradients were non-finite in {int(self._nonfinite)} step(s) up to step "
                f"{self.global_step} (those optimizer steps were skipped; weights are finite)")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if (self.global_step % self.NAN_CHECK_EVERY) == 0:
            self._check_skipped_steps()

    def on_train_epoch_end(self):
        self._check_skipped_steps()
        if self._loss_count:
            self.epoch_losses.append(float(self._loss_sum) / self._loss_count)
        self._loss_sum, self._loss_count = None, 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        # Same noise for every validation pass, so the curve compares like with like.
        gen = torch.Generator(device=x.device).manual_seed(10_000 + batch_idx)
        x = self.model_input(x, gen)
        loss = self.loss_fn(self.model, x, self._labels(y), generator=gen)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        fused = fused_optimizer(self.fused_optimizer, params)
        opt = self.optimizer_factory(params, **({"fused": True} if fused else {}))
        self._guarded_optimizer = opt if fused else None
        return with_lr_schedule(self, opt, self.warmup_steps, self.lr_decay)

    def _guidance_needs_labels(self) -> bool:
        return self.guidance is not None and self.guidance.needs_labels()

    @property
    def takes_labels(self) -> bool:
        """Whether sampling is per class (a class-conditional model, or a classifier's
        guidance)."""
        return (self.conditional or self._guidance_needs_labels()) and not self.takes_captions

    @property
    def takes_captions(self) -> bool:
        """Whether y is a caption's token ids (conditional on a captioned dataset); without
        one, samples get the empty caption (the unconditional model)."""
        return self.conditional and self.tokenizer is not None

    def on_save_checkpoint(self, checkpoint):
        checkpoint["scorelab"] = {"config": self.config, "data_shape": list(self.pixel_shape),
                                  "num_classes": self.num_classes, "is_image": self.is_image}
        if self.latent is not None:
            checkpoint["scorelab"]["latent"] = self.latent.describe()
        if self.tokenizer is not None:
            checkpoint["scorelab"]["tokenizer"] = self.tokenizer
        loss_state = self.loss_fn.state_dict()
        if loss_state:
            checkpoint["scorelab"]["loss_state"] = loss_state

    def on_load_checkpoint(self, checkpoint):
        state = (checkpoint.get("scorelab") or {}).get("loss_state")
        if state:
            self.loss_fn.load_state_dict(state, self.model.path)

    def set_guidance(self, guidance) -> None:
        """Guide ``sample()`` with a ``scorelab.guidance.predictions`` object (None: no
        guidance). Kept out of the module's state (a guide's weights are not this model's)."""
        self.guidance = guidance

    def guided_prediction_fn(self, y: torch.Tensor | None):
        """``model(x, t) -> Prediction`` with labels y, through the guidance if one is set."""
        if self.guidance is None:
            return self.model.prediction_fn(self._labels(y))
        self.guidance.to(self.device)
        return self.guidance.prediction_fn(self.model.prediction, self.model.path, y,
                                           self.conditional)

    @torch.no_grad()
    def x0_variance(self, times: torch.Tensor, num: int | None = None, seed: int = 0,
                    data=None) -> X0Variance:
        """Analytic-DPM's moments m_t (``reverse_step.X0Variance``) of this model at
        ``times``, from ``num`` training examples with a fixed generator (labels bound for a
        conditional model)."""
        data = data if data is not None else self.analytic_data
        if data is None and self._trainer is not None:
            data = getattr(self.trainer, "datamodule", None)
        if data is None:
            raise ValueError("sampler.variance=analytic needs the training data: no data "
                             "module is attached to this model (analytic_data)")
        if data.train_set is None:
            data.setup("fit")
        x, y = dataset_examples(self, data, data.train_set, num or self.ANALYTIC_EXAMPLES, seed)
        gen = torch.Generator(device=x.device).manual_seed(seed + 1)
        was_training = self.training
        self.eval()
        try:
            if self.conditional:
                return X0Variance.estimate(self.model.prediction_fn, self.model.path, x, times,
                                           generator=gen, labels=y)
            return X0Variance.estimate(self.model.prediction_fn(None), self.model.path, x,
                                       times, generator=gen)
        finally:
            self.train(was_training)

    def _with_analytic(self, name: str, steps: int, settings: dict) -> dict:
        """``settings`` with the x0 variance that variance=analytic needs, estimated at the
        sampler's grid once per weights (cached until the next training step)."""
        if settings.get("variance") != "analytic" or settings.get("x0_variance") is not None:
            return settings
        grid = {k: settings[k] for k in ("grid", "rho", "eps", "shift", "final")
                if settings.get(k) is not None}
        ts = time_grid(name, self.model.path, steps, **grid)
        key = (self.global_step, tuple(ts.tolist()))
        if self._analytic_cache is None or self._analytic_cache[0] != key:
            self._analytic_cache = (key, self.x0_variance(ts.to(self.device)))
        return {**settings, "x0_variance": self._analytic_cache[1]}

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, generator=None, callback=None,
               sampler: dict | None = None, decode: bool = True) -> SampleResult:
        """Draw n samples with ``sampler`` settings {name, steps, **options} (default: the
        module's configured sampler), guided if ``set_guidance`` was given one. A model
        that takes labels (conditional, or guided by a classifier) given none draws the
        classes in turn (the null label is only for classifier-free guidance). A latent
        model's samples are decoded to pixels (fp32) unless ``decode=False``; ``callback``
        sees the latents."""
        if self.takes_labels and y is None:
            y = torch.arange(n, device=self.device) % self.num_classes
        settings = dict(sampler or self.sampler)
        name, steps = settings.pop("name"), settings.pop("steps")
        settings = self._with_analytic(name, steps, settings)
        model = self.guided_prediction_fn(y)
        was_training = self.training
        self.eval()
        try:
            res = sample(model, self.model.path, (n,) + self.data_shape, sampler=name,
                         steps=steps, generator=generator, device=self.device,
                         callback=callback, **settings)
            if self.latent is not None and decode:
                res = SampleResult(self.latent.decode(res.x), res.nfe)
            return res
        finally:
            self.train(was_training)

"""Published networks as scorelab models (``scorelab.adapters``, ``scorelab.paths.discrete``):
the discrete schedules and timesteps against diffusers' schedulers, sampling parity with
diffusers' own loops on tiny random networks built from configs (no hub), and the CLI."""

import json

import numpy as np
import pytest
import torch

from conftest import compose_config, refused_at_start

diffusers = pytest.importorskip("diffusers")

from scorelab.adapters import AdapterUnavailable, load_diffusers, score_model_from_diffusers  # noqa: E402
from scorelab.guidance.predictions import ClassifierFree  # noqa: E402
from scorelab.paths.discrete import (BETA_SCHEDULES, SPACINGS, DiscreteVPPath,  # noqa: E402
                                     TimestepLinearPath, alphas_cumprod, scheduler_betas,
                                     scheduler_timesteps)
from scorelab.sampling import sample  # noqa: E402

BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012),
         "squaredcos_cap_v2": (1e-4, 0.02)}


def tiny_unet(size=8, channels=1, out=None, seed=0):
    """A random UNet2DModel whose output is small (its last convolution scaled down), so
    that samples stay O(1) and an absolute tolerance means something."""
    torch.manual_seed(seed)
    net = diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=out or channels,
        layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with torch.no_grad():
        net.conv_out.weight.mul_(0.05)
        net.conv_out.bias.zero_()
    return net.eval()


def tiny_dit(num_classes=10, seed=0):
    """A random class-conditional DiT with learned sigma (8 output channels for 4 in)."""
    torch.manual_seed(seed)
    net = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes)
    with torch.no_grad():        # DiT zero-initialises its output layer: give it some signal
        for p in net.proj_out_2.parameters():
            p.normal_(0, 0.02)
        for p in net.proj_out_1.parameters():
            p.normal_(0, 0.02)
    return net.eval()


def adapted(net, scheduler, timestep_input="interpolated"):
    config = dict(scheduler.config, _class_name=type(scheduler).__name__)
    return score_model_from_diffusers(net, type(net).__name__, config, timestep_input)


def diffusers_loop(net, scheduler, x, steps, **step_kw):
    """diffusers' own sampling loop (what its pipelines do) from x."""
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t).sample, t, x, **step_kw).prev_sample
    return x


# ---- the schedules -----------------------------------------------------------------

@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_alphas_cumprod_are_the_schedulers(schedule):
    start, end = BETAS[schedule]
    scheduler = diffusers.DDIMScheduler(beta_schedule=schedule, beta_start=start, beta_end=end)
    ours = alphas_cumprod(scheduler_betas(schedule, 1000, start, end))
    assert torch.equal(ours, scheduler.alphas_cumprod)
    with pytest.raises(ValueError, match="unknown beta schedule 'sigmoid'; known: linear"):
        scheduler_betas("sigmoid", 1000)


@pytest.mark.parametrize("cls,style", [(diffusers.DDIMScheduler, "single"),
                                       (diffusers.DDPMScheduler, "single"),
                                       (diffusers.DPMSolverMultistepScheduler, "multistep")])
def test_scheduler_timesteps_are_the_schedulers(cls, style):
    for spacing in SPACINGS:
        for offset in ((0, 1) if spacing == "leading" else (0,)):
            scheduler = cls(timestep_spacing=spacing, steps_offset=offset)
            for steps in (1, 3, 7, 10, 20, 50, 1000):
                scheduler.set_timesteps(steps)
                assert scheduler_timesteps(spacing, steps, 1000, offset, style) \
                    == scheduler.timesteps.tolist(), (spacing, offset, steps)


def _path(schedule="linear", **kw):
    start, end = BETAS[schedule]
    return DiscreteVPPath(alphas_cumprod(scheduler_betas(schedule, 1000, start, end)), **kw)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_discrete_path_hits_the_schedule_and_is_a_smooth_vp_path(schedule):
    """alpha^2 = alphabar_i at t_i = (i + 1) / N exactly; alpha^2 + sigma^2 = 1 everywhere;
    the derivatives are those of alpha, sigma (central differences off the knots); the
    log-SNR inverts; t = 0 is clean data."""
    path = _path(schedule)
    ab = path.alphas_cumprod.double()
    alpha, sigma = path.alpha_sigma(path.timestep_times(torch.arange(1000)))
    torch.testing.assert_close(alpha, ab.sqrt(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sigma, (1 - ab).sqrt(), rtol=0, atol=1e-12)
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)[1:-1]
    t = t[((t * 1000) - (t * 1000).round()).abs() > 1e-3]          # off the kinks
    alpha, sigma = path.alpha_sigma(t)
    torch.testing.assert_close(alpha ** 2 + sigma ** 2, torch.ones_like(t), rtol=0, atol=1e-12)
    h = 1e-8
    d_alpha, d_sigma = path.derivatives(t)
    (a1, s1), (a0, s0) = path.alpha_sigma(t + h), path.alpha_sigma(t - h)
    torch.testing.assert_close(d_alpha, (a1 - a0) / (2 * h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_sigma, (s1 - s0) / (2 * h), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(path.t_from_log_snr(path.log_snr(t)), t, rtol=0, atol=1e-12)
    a, s = path.alpha_sigma(torch.zeros(1, dtype=torch.float64))
    assert a.item() == 1 and s.item() == 0 and not path.alpha_vanishes
    assert path.prior_std() == 1.0


def test_timestep_input_is_k_diffusions_log_sigma_interpolation_or_nearest():
    """Interpolated: the fractional timestep k-diffusion's DiscreteSchedule.sigma_to_t gives a
    noise level (linear interpolation of log sigma between the training levels, written out
    here with numpy); nearest: that rounded. Both are the integer at the knots (float32
    grid times included)."""
    path, nearest = _path(), _path(timestep_input="nearest")
    t = torch.linspace(0.0011, 0.9999, 997, dtype=torch.float64)
    alpha, sigma = path.alpha_sigma(t)
    ab = path.alphas_cumprod.double().numpy()
    log_sigmas = 0.5 * np.log((1 - ab) / ab)
    want = np.interp(np.log((sigma / alpha).numpy()), log_sigmas, np.arange(1000))
    np.testing.assert_allclose(path.noise_label(t).numpy(), want, rtol=0, atol=1e-8)
    assert torch.equal(nearest.noise_label(t), path.noise_label(t).round())
    knots = path.timestep_times(torch.arange(1000)).float()
    assert torch.equal(path.noise_label(knots), torch.arange(1000).float())
    assert path.noise_label(torch.tensor([1e-4])).item() == 0     # below the first timestep


def test_flow_path_scheduler_grid_is_the_flow_schedulers_sigmas():
    for shift in (1.0, 3.0):
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
        path = TimestepLinearPath(1000, shift)
        for steps in (1, 4, 28):
            scheduler.set_timesteps(steps)
            torch.testing.assert_close(path.scheduler_grid(steps).float(), scheduler.sigmas,
                                       rtol=0, atol=1e-7)
        assert path.noise_label(torch.tensor([0.25])).item() == 250.0


# ---- parity with diffusers' loops -------------------------------------------------------

X_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_equals_diffusers_ddim(spacing, one_thread):
    """DDIM (eta = 0) on the scheduler's timesteps equals DDIMScheduler's loop from the same
    noise. (With linspace spacing, or trailing with N not a multiple of the steps, diffusers'
    DDIM steps to t - N // steps, not to its next timestep: that loop is not reproduced.)"""
    net = tiny_unet()
    scheduler = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing=spacing)
    model = adapted(net, scheduler).model
    for steps in (5, 20):
        want = diffusers_loop(net, scheduler, X_T.clone(), steps)
        got = sample(model.prediction_fn(), model.path, None, "ddim", steps=steps,
                     x_init=X_T, grid="scheduler")
        assert got.nfe == steps
        torch.testing.assert_close(got.x, want, rtol=1e-5, atol=1e-5)


def test_clipped_ddim_equals_ddim_with_the_clipped_model_output(one_thread):
    """clip_sample: x0_hat clamped and eps_hat re-derived from it is DDIMScheduler's step with
    use_clipped_model_output=True (its default mixes the clipped x0 with the raw eps, which
    no prediction is: x != alpha x0 + sigma eps), and the clip is active here."""
    net = tiny_unet(seed=5)
    scheduler = diffusers.DDIMScheduler(clip_sample=True)
    model = adapted(net, scheduler).model
    want = diffusers_loop(net, scheduler, X_T.clone(), 10, use_clipped_model_output=True)
    got = sample(model.prediction_fn(), model.path, None, "ddim", steps=10, x_init=X_T,
                 grid="scheduler").x
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    plain = adapted(net, scheduler).model
    plain.x0_clip = None
    unclipped = sample(plain.prediction_fn(), plain.path, None, "ddim", steps=10, x_init=X_T,
                       grid="scheduler").x
    assert (unclipped - got).abs().max() > 0.1
    pred = model.prediction(X_T, torch.full((3,), 0.5))
    assert pred.x0.abs().max() <= 1.0
    torch.testing.assert_close(pred.alpha * pred.x0 + pred.sigma * pred.eps, X_T)


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_dpm_solver_2m_equals_diffusers_dpm_solver_multistep(spacing, one_thread):
    net = tiny_unet(seed=1)
    scheduler = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing)
    model = adapted(net, scheduler).model
    for steps in (6, 20):
        want = diffusers_loop(net, scheduler, X_T.clone(), steps)
        got = sample(model.prediction_fn(), model.path, None, "dpm_solver", steps=steps,
                     x_init=X_T, grid="scheduler", order=2)
        torch.testing.assert_close(got.x, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip", [False, True])
def test_ancestral_equals_diffusers_ddpm_with_the_same_noise(clip, one_thread):
    """The ancestral step with the posterior variance on the scheduler's timesteps, both
    drawing their noise from generators with the same seed in the same order, is
    DDPMScheduler's loop -- with its x0 clipping too (clip_sample, read from the config)."""
    net = tiny_unet(seed=2)
    scheduler = diffusers.DDPMScheduler(clip_sample=clip)
    model = adapted(net, scheduler).model
    assert model.x0_clip == (1.0 if clip else None)
    for steps in (10, 25):
        want = diffusers_loop(net, scheduler, X_T.clone(), steps,
                              generator=torch.Generator().manual_seed(3))
        got = sample(model.prediction_fn(), model.path, None, "pc", steps=steps, x_init=X_T,
                     grid="scheduler", predictor="ancestral", corrector="none",
                     generator=torch.Generator().manual_seed(3))
        assert got.nfe == steps
        torch.testing.assert_close(got.x, want, rtol=1e-5, atol=1e-5)


def test_flow_euler_equals_diffusers_flow_match_euler(one_thread):
    net = tiny_unet(seed=3)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    model = adapted(net, scheduler).model
    assert model.head.name == "velocity"
    for steps in (4, 28):
        want = diffusers_loop(net, scheduler, X_T.clone(), steps)
        got = sample(model.prediction_fn(), model.path, None, "ode", steps=steps,
                     x_init=X_T, grid="scheduler", method="euler")
        torch.testing.assert_close(got.x, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_dit_with_classifier_free_guidance_equals_the_dit_pipeline(scale, one_thread):
    """A class-conditional DiT with learned sigma: DDIM with scorelab's classifier-free
    guidance equals the DiT pipeline's loop (the conditional and null-class halves in one
    batch, eps_u + w (eps_c - eps_u) on the eps channels, the variance half dropped); w = 1
    is the conditional model alone, as in diffusers."""
    net = tiny_dit()
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    wrapped = adapted(net, scheduler)
    assert wrapped.model.learns_variance and wrapped.num_classes == 10
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([3, 7])
    scheduler.set_timesteps(8)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            both = net(torch.cat([x, x]), timestep=t.expand(4),
                       class_labels=torch.cat([labels, torch.full((2,), 10)])).sample
            eps_c, eps_u = both[:2, :4], both[2:, :4]
            eps = eps_u + scale * (eps_c - eps_u) if scale != 1 else \
                net(x, timestep=t.expand(2), class_labels=labels).sample[:, :4]
            x = scheduler.step(eps, t, x).prev_sample
    model = wrapped.model
    guided = ClassifierFree(scale).prediction_fn(model.prediction, model.path, labels)
    got = sample(guided, model.path, None, "ddim", steps=8, x_init=x_T, grid="scheduler")
    torch.testing.assert_close(got.x, x, rtol=1e-5, atol=1e-5)


def test_nearest_feeds_integer_timesteps_and_interpolated_fractional_ones():
    """On a grid between the training timesteps (karras), nearest feeds the network
    rounded timesteps; interpolated the fractional ones; on the scheduler's grid both feed
    the same integers."""
    net = tiny_unet()
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    for kind in ("nearest", "interpolated"):
        model = adapted(net, scheduler, kind).model
        seen.clear()
        sample(model.prediction_fn(), model.path, None, "ddim", steps=6, x_init=X_T,
               grid="karras")
        fractional = any(bool((s != s.round()).any()) for s in seen)
        assert fractional == (kind == "interpolated"), kind
        seen.clear()
        sample(model.prediction_fn(), model.path, None, "ddim", steps=6, x_init=X_T,
               grid="scheduler")
        assert [s.tolist() for s in seen] == [[float(v)] * 3 for v in
                                               scheduler_timesteps("leading", 6, 1000)]


def test_text_unet_reads_the_prompt_embedding_as_y():
    torch.manual_seed(0)
    net = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=12,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    wrapped = adapted(net, diffusers.DDIMScheduler(clip_sample=False))
    assert wrapped.takes_text
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 12)
    t = wrapped.model.path.timestep_times(torch.tensor([500, 500])).float()
    with torch.no_grad():
        eps = wrapped.model.prediction(x, t, emb).eps
        want = net(x, 500, encoder_hidden_states=emb).sample
    torch.testing.assert_close(eps, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs its prompt embedding"):
        wrapped.model.prediction(x, t)


# ---- loading and refusals -----------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A DDPM pipeline of a tiny UNet2DModel for 8x8 digits, saved with save_pretrained."""
    out = tmp_path_factory.mktemp("pipe") / "ddpm"
    diffusers.DDPMPipeline(unet=tiny_unet(),
                           scheduler=diffusers.DDPMScheduler(clip_sample=False)
                           ).save_pretrained(out)
    return out


def test_load_diffusers_reads_network_and_scheduler(pipeline_dir, tmp_path):
    wrapped = load_diffusers(str(pipeline_dir), local_files_only=True)
    assert wrapped.data_shape == (1, 8, 8) and wrapped.num_classes == 0
    assert wrapped.description["scheduler"] == "DDPMScheduler"
    assert wrapped.description["subfolder"] == "unet" and wrapped.model.head.name == "eps"
    assert wrapped.default_sampler == {"name": "dpm_solver", "steps": 20, "grid": "scheduler"}
    with pytest.raises(AdapterUnavailable, match="no network config"):
        load_diffusers(str(tmp_path / "nowhere"), local_files_only=True)
    bare = tmp_path / "bare"
    tiny_unet().save_pretrained(bare)
    with pytest.raises(AdapterUnavailable, match="no scheduler config"):
        load_diffusers(str(bare))
    load_diffusers(str(bare), scheduler=str(pipeline_dir / "scheduler"))


@pytest.mark.parametrize("change,needle", [
    ({"_class_name": "MagicScheduler"}, "unknown scheduler 'MagicScheduler'"),
    ({"prediction_type": "noise"}, "unknown prediction_type 'noise'"),
    ({"beta_schedule": "sigmoid"}, "unknown beta_schedule 'sigmoid'"),
    ({"rescale_betas_zero_snr": True}, "zero terminal SNR"),
])
def test_unknown_scheduler_settings_are_refused(change, needle):
    config = {**diffusers.DDPMScheduler().config, "_class_name": "DDPMScheduler", **change}
    with pytest.raises(AdapterUnavailable, match=needle):
        score_model_from_diffusers(tiny_unet(), "UNet2DModel", config)


def test_missing_extra_is_one_line(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_diffusers(name, *args, **kw):
        if name == "diffusers":
            raise ImportError("no diffusers")
        return real(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(AdapterUnavailable, match=r"pip install 'scorelab\[diffusers\]'"):
        load_diffusers("anything")


def test_sample_and_evaluate_a_pipeline_through_the_cli(pipeline_dir, tmp_path, one_thread):
    """sample.py and evaluate.py take model=diffusers in place of ckpt=: samples with the
    scheduler's own loop by default, FID and PF-ODE bits/dim (Hutchinson) through the
    metric callback, and the run records where the weights came from."""
    from scorelab.cli import evaluate, sample as sample_cli
    out = tmp_path / "sample"
    out.mkdir()
    info = sample_cli.main(compose_config("sample", [
        "model=diffusers", f"model.pretrained={pipeline_dir}", "num_samples=4",
        "sampler.steps=3"], out))
    assert info["sampler"] == {"name": "dpm_solver", "steps": 3, "grid": "scheduler"}
    assert info["nfe_per_sample"] == 3 and info["weights"] == "pretrained"
    assert info["pretrained"]["pretrained"] == str(pipeline_dir)
    assert np.load(out / "samples.npz")["samples"].shape == (4, 1, 8, 8)
    out = tmp_path / "eval"
    out.mkdir()
    m = evaluate.main(compose_config("evaluate", [
        "model=diffusers", f"model.pretrained={pipeline_dir}", "data=digits",
        "metrics=[fid,bpd]", "num_samples=8", "sample_batch_size=8", "sampler=ddim",
        "sampler.steps=4", "sampler.grid=scheduler", "metrics.bpd.num_examples=2",
        "metrics.bpd.chunk=2", "metrics.bpd.rtol=1e-3", "metrics.bpd.atol=1e-3",
        f"metrics.fid.cache_dir={tmp_path / 'stats'}"], out))
    assert np.isfinite(m["fid"]) and m["fid"] > 0 and np.isfinite(m["bpd"])
    assert m["bpd_settings"]["divergence"] == "hutchinson"
    assert m["sample_settings"]["nfe"] == 4 and m["weights"] == "pretrained"
    assert json.loads((out / "metrics.json").read_text())["pretrained"]["network"] \
        == "UNet2DModel"


@pytest.mark.parametrize("command,overrides,needle", [
    ("sample", [], "no model: give ckpt=PATH"),
    ("sample", ["model=diffusers"], "model.pretrained: not given"),
    ("sample", ["model=diffusers", "model.pretrained=/no/such/dir", "model.local_files_only=true"],
     "no network config"),
    ("sample", ["model=diffusers", "model.pretrained=nobody/no-such-model-here",
                "model.local_files_only=true"], "the Hugging Face hub could not provide it"),
    ("sample", ["model=diffusers", "model.pretrained=X", "model.timestep_input=floor"],
     "model.timestep_input"),
    ("sample", ["model=diffusers", "model.pretrained=X", "ckpt=a.ckpt"], "exactly one"),
    ("evaluate", ["model=diffusers", "model.pretrained=X"], "needs data=<dataset>"),
])
def test_bad_pretrained_input_is_refused_at_start(command, overrides, needle, tmp_path,
                                                  capsys):
    refused_at_start(command, overrides, needle, tmp_path, capsys)


def test_pretrained_with_data_of_another_shape_is_refused(pipeline_dir, tmp_path, capsys):
    refused_at_start("evaluate", ["model=diffusers", f"model.pretrained={pipeline_dir}",
                                  "data=mnist5k"], "takes [1, 8, 8]", tmp_path, capsys)


def test_a_latent_dit_with_its_vae_samples_through_the_cli(tmp_path, one_thread, capsys):
    """A DiT pipeline directory (transformer/, scheduler/, vae/) with autoencoder=diffusers:
    the VAE's scaling factor is the latent scale, the images' shape follows from the VAE, CFG
    uses the DiT's null class, and samples are decoded to pixels."""
    from scorelab.cli import sample as sample_cli
    pipe = tmp_path / "dit"
    tiny_dit().save_pretrained(pipe / "transformer")
    diffusers.DDIMScheduler(clip_sample=False).save_pretrained(pipe / "scheduler")
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.18215
    ).save_pretrained(pipe / "vae")
    common = ["model=diffusers", f"model.pretrained={pipe}", "autoencoder=diffusers",
              f"autoencoder.pretrained={pipe}", "autoencoder.subfolder=vae"]
    out = tmp_path / "s"
    out.mkdir()
    info = sample_cli.main(compose_config("sample", common + [
        "num_samples=3", "class_label=5", "guidance=cfg", "guidance.scale=4",
        "sampler=ddim", "sampler.steps=3", "sampler.grid=scheduler"], out))
    assert np.load(out / "samples.npz")["samples"].shape == (3, 3, 16, 16)
    assert info["latent"]["scale"] == [pytest.approx(0.18215)] * 4
    assert info["guidance"]["scale"] == 4 and info["pretrained"]["subfolder"] == "transformer"
    refused_at_start("sample", common + ["autoencoder.normalize=scale"],
                     "trained with a fixed latent scale", tmp_path / "r1", capsys)
    refused_at_start("sample", ["ckpt=a.ckpt", "autoencoder=diffusers",
                                "autoencoder.pretrained=X"],
                     "carries its own latent space", tmp_path / "r2", capsys)


def test_a_text_pipeline_reads_prompts_with_its_own_clip_and_guides_like_stable_diffusion(
        tmp_path, one_thread, capsys):
    """A Stable Diffusion style pipeline (unet/ UNet2DConditionModel, tokenizer/ and
    text_encoder/ CLIP, scheduler/, vae/): prompts go through its own tokenizer and text
    model, the null caption is CLIP's encoding of "", and DDIM with scorelab's CFG equals the
    pipeline's loop (eps_u + w (eps_c - eps_u) on both halves of one batch); sample.py takes
    prompt= with guidance=cfg and decodes through the VAE."""
    pytest.importorskip("transformers")
    from tiny_clip import tiny_clip
    from transformers import CLIPTextModel, CLIPTokenizer
    from scorelab.cli import sample as sample_cli
    from scorelab.data.captions import encode_prompts
    pipe = tmp_path / "sd"
    tiny_clip(pipe / "text_encoder")
    tiny_clip(pipe / "tokenizer")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
        attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    unet.save_pretrained(pipe / "unet")
    diffusers.DDIMScheduler(clip_sample=False, beta_schedule="scaled_linear",
                            beta_start=0.00085, beta_end=0.012).save_pretrained(pipe / "scheduler")
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.18215
    ).save_pretrained(pipe / "vae")
    wrapped = load_diffusers(str(pipe), local_files_only=True)
    assert wrapped.takes_text and wrapped.tokenizer is not None
    # the pipeline's own loop: CLIP's last hidden states of the prompt and of ""
    tok = CLIPTokenizer.from_pretrained(pipe / "tokenizer")
    clip = CLIPTextModel.from_pretrained(pipe / "text_encoder").eval()
    prompts = ["a 3 on the left and a 7 on the right", "a 1 on the left and a 2 on the right"]

    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=20, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return clip(ids)[0]
    cond, uncond = embed(prompts), embed(["", ""])
    scheduler = diffusers.DDIMScheduler.from_pretrained(pipe / "scheduler")
    scheduler.set_timesteps(6)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])
                        ).sample
            eps_u, eps_c = both.chunk(2)
            x = scheduler.step(eps_u + 3.0 * (eps_c - eps_u), t, x).prev_sample
    model = wrapped.model
    ids = encode_prompts(wrapped.tokenizer, prompts)
    guided = ClassifierFree(3.0).prediction_fn(model.prediction, model.path, ids)
    got = sample(guided, model.path, None, "ddim", steps=6, x_init=x_T, grid="scheduler")
    torch.testing.assert_close(got.x, x, rtol=1e-5, atol=1e-5)
    out = tmp_path / "s"
    out.mkdir()
    info = sample_cli.main(compose_config("sample", [
        "model=diffusers", f"model.pretrained={pipe}", "autoencoder=diffusers",
        f"autoencoder.pretrained={pipe}", "autoencoder.subfolder=vae", f"prompt={prompts[0]}",
        "guidance=cfg", "guidance.scale=3", "num_samples=2", "sampler.steps=3"], out))
    assert np.load(out / "samples.npz")["samples"].shape == (2, 3, 16, 16)
    assert info["prompts"] == [prompts[0]] * 2
    refused_at_start("sample", ["model=diffusers", f"model.pretrained={pipe}", "class_label=3"],
                     "conditioned on captions", tmp_path / "r", capsys)

"""What differs between the text-to-image families when they train and score.

A :class:`Family` knows how prompts become its denoiser's conditioning (one, two or three text encoders,
pooled embeddings, attention masks, size ids), how latents are laid out for its denoiser (Flux packs them
into 2 x 2 patches), and which objective trains it:

- :class:`NoisePrediction` (Stable Diffusion 1.x/2.x, SDXL, PixArt): DDPM noise at a uniform random
  timestep, the target the noise or the velocity, as diffusers' ``train_text_to_image*.py`` do;
- :class:`FlowMatching` (SD3, Flux): ``noisy = (1 - sigma) x0 + sigma noise``, the target ``noise - x0``,
  sigmas drawn by ``compute_density_for_timestep_sampling`` and losses weighted by
  ``compute_loss_weighting_for_sd3``, as diffusers' SD3 and Flux scripts do.

Each family uses its pipeline's own ``encode_prompt``, so fine-tuning conditions the denoiser exactly as
generation does.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from taskzoo.errors import ModelNotFoundError


class NoisePrediction:
    """DDPM: the denoiser predicts the noise (``epsilon``) or the velocity (``v_prediction``), as the
    pipeline's scheduler config says; min-SNR-gamma weighting (Hang et al. 2023) with ``snr_gamma``."""

    def __init__(self, scheduler_config, options: dict):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.steps = self.scheduler.config.num_train_timesteps
        self.kind = self.scheduler.config.prediction_type
        self.snr_gamma = options.get("snr_gamma")

    def draw(self, n: int, device) -> torch.Tensor:
        return torch.randint(0, self.steps, (n,), device=device)

    def fixed(self, fraction: float, n: int, device) -> torch.Tensor:
        """The timestep ``fraction`` of the way along the schedule (0: clean, 1: pure noise)."""
        return torch.full((n,), int(fraction * self.steps), device=device)

    def noised(self, x0, noise, timesteps):
        """(noisy latents, the target the denoiser should predict)."""
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        if self.kind == "epsilon":
            return noisy, noise
        if self.kind == "v_prediction":
            return noisy, self.scheduler.get_velocity(x0, noise, timesteps)
        raise ValueError(f"Fine-tuning needs prediction_type 'epsilon' or 'v_prediction'; the scheduler has "
                         f"{self.kind!r}.")

    def weights(self, timesteps):
        if not self.snr_gamma:
            return None
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, timesteps)
        return snr.clamp(max=self.snr_gamma) / (snr + 1 if self.kind == "v_prediction" else snr)


class FlowMatching:
    """Rectified flow: the denoiser predicts the velocity ``noise - x0`` at noise level sigma (the timestep is
    ``1000 sigma``, shifted as the pipeline's FlowMatchEulerDiscreteScheduler config says)."""

    def __init__(self, scheduler_config, options: dict):
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.steps = scheduler.config.num_train_timesteps
        self.timesteps = scheduler.timesteps  # descending: index 0 is pure noise
        self.options = options

    def draw(self, n: int, device) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        options = self.options
        u = compute_density_for_timestep_sampling(options["weighting_scheme"], n, options["logit_mean"],
                                                  options["logit_std"], options["mode_scale"])
        return self.timesteps[(u * self.steps).long().clamp(max=self.steps - 1)].to(device)

    def fixed(self, fraction: float, n: int, device) -> torch.Tensor:
        index = min(self.steps - 1, int(round((1 - fraction) * self.steps)))
        return self.timesteps[index].repeat(n).to(device)

    def noised(self, x0, noise, timesteps):
        sigmas = (timesteps.float() / self.steps).view(-1, *[1] * (x0.ndim - 1))
        return (1 - sigmas) * x0 + sigmas * noise, noise - x0

    def weights(self, timesteps):
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.options["weighting_scheme"], timesteps.float() / self.steps)


class Family:
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, a UNet, DDPM."""

    name = "sd"
    denoiser = "unet"  # the pipeline attribute that fine-tuning trains
    encoders = ("text_encoder",)  # the frozen text encoders (the VAE is frozen too)
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")  # attention projections
    objective_class = NoisePrediction

    def __init__(self, pipeline):
        self.pipeline = pipeline

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.denoiser)

    def frozen(self) -> dict[str, torch.nn.Module]:
        names = ("vae", *self.encoders)
        return {name: getattr(self.pipeline, name) for name in names if getattr(self.pipeline, name, None) is not None}

    @contextmanager
    def standing_in(self, denoiser):
        """Within this context ``denoiser`` stands in for the pipeline's own (to save a merged copy, say)."""
        own = self.module
        setattr(self.pipeline, self.denoiser, denoiser)
        try:
            yield
        finally:
            setattr(self.pipeline, self.denoiser, own)

    def save(self, path, denoiser=None) -> None:
        """The pipeline folder, with ``denoiser`` (if given) in place of the pipeline's own."""
        with self.standing_in(denoiser or self.module):
            self.pipeline.save_pretrained(path)

    def place_frozen(self, device, dtype) -> dict:
        """The frozen parts to ``device``, cast to ``dtype`` (None: kept) as diffusers' scripts cast them for mixed
        precision; a VAE whose config says force_upcast stays float32 under fp16. Returns {cast part: own dtype}."""
        cast = {}
        for name, part in self.frozen().items():
            if dtype is None or (name == "vae" and dtype == torch.float16 and part.config.force_upcast):
                part.to(device)
            else:
                cast[name] = part.dtype
                part.to(device, dtype)
        return cast

    def restore_frozen(self, cast: dict, base: str, device) -> None:
        """The parts :meth:`place_frozen` cast, reloaded from the pipeline folder ``base`` (casting back would keep
        the rounding), and every frozen part on ``device``."""
        for name, part in self.frozen().items():
            if name in cast:
                part = type(part).from_pretrained(base, subfolder=name).to(dtype=cast[name]).requires_grad_(False)
                setattr(self.pipeline, name, part.eval())
            part.to(device)

    def objective(self, options: dict):
        return self.objective_class(self.pipeline.scheduler.config, options)

    def native_size(self) -> int:
        return self.module.config.sample_size * self.pipeline.vae_scale_factor

    def size_multiple(self) -> int:
        """Generated and trained sizes must be multiples of this (latent size x patch size)."""
        return self.pipeline.vae_scale_factor * getattr(self.module.config, "patch_size", 1)

    def prompt_tokenizer(self):
        """(the tokenizer whose limit cuts captions, that limit): for the truncation warning."""
        return self.pipeline.tokenizer, self.pipeline.tokenizer.model_max_length

    @torch.no_grad()
    def latents(self, batch: dict, sample: bool) -> torch.Tensor:
        """The frozen VAE's latents of the batch's images (a posterior draw, or for evaluation its mean), shifted
        and scaled by the VAE config, as the denoiser sees them."""
        vae = self.pipeline.vae
        if "latent_mean" in batch:  # cached before training (cache_latents=True)
            mean, std = batch["latent_mean"], batch["latent_std"]
        else:
            posterior = vae.encode(batch["pixel_values"].to(vae.device, vae.dtype)).latent_dist
            mean, std = posterior.mean, posterior.std
        latents = (mean + std * torch.randn_like(mean) if sample else mean).float()
        return (latents - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor

    def losses(self, model, objective, latents, noise, timesteps, conditioning: dict, options: dict) -> torch.Tensor:
        """Per-sample mean squared error of the denoiser's prediction (``model``: the prepared Denoiser)
        against the objective's target."""
        noisy, target = objective.noised(latents, noise, timesteps)
        prediction = self.output(model(**self.inputs(noisy, timesteps, conditioning, options)), noisy)
        return (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, noisy.ndim)))

    def encode(self, texts: list[str], batch: dict, device) -> dict:
        """The denoiser's conditioning for these captions (keyword arguments of its forward), from the frozen
        text encoders. The pipelines log every truncated prompt; the task counts them for one warning instead."""
        from diffusers.utils import logging

        level = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            with torch.no_grad():
                return self.conditioning(texts, batch, device)
        finally:
            logging.set_verbosity(level)

    def conditioning(self, texts, batch, device) -> dict:
        return {"encoder_hidden_states": self.pipeline.encode_prompt(texts, device, 1, False)[0]}

    def inputs(self, noisy, timesteps, conditioning: dict, options: dict) -> dict:
        return {"sample": noisy, "timestep": timesteps, **conditioning}

    def output(self, prediction, noisy):
        """The denoiser's output in the latents' layout."""
        return prediction

    def call_options(self) -> dict:
        """Options every generation passes to the pipeline."""
        return {}


class SDXL(Family):
    """Two CLIP text encoders (hidden states side by side, the second's pooled projection) and size/crop ids."""

    name, encoders = "sdxl", ("text_encoder", "text_encoder_2")

    def conditioning(self, texts, batch, device):
        embeds, _, pooled, _ = self.pipeline.encode_prompt(texts, device=device, do_classifier_free_guidance=False)
        # (original height, width, crop top, left, target height, width) per image, as diffusers' SDXL script.
        time_ids = batch["size_ids"].to(device, embeds.dtype)
        return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


class SD3(Family):
    """Two CLIPs and a T5 (optional) into an MMDiT transformer, flow matching."""

    name, denoiser, encoders, objective_class = "sd3", "transformer", ("text_encoder", "text_encoder_2",
                                                                        "text_encoder_3"), FlowMatching
    lora_targets = (*Family.lora_targets, "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out")  # joint attention

    def prompt_tokenizer(self):
        if self.pipeline.tokenizer_3 is not None:
            return self.pipeline.tokenizer_3, 256  # the pipeline's max_sequence_length
        return super().prompt_tokenizer()

    def conditioning(self, texts, batch, device):
        embeds, _, pooled, _ = self.pipeline.encode_prompt(texts, None, None, device=device,
                                                           do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def inputs(self, noisy, timesteps, conditioning, options):
        return {"hidden_states": noisy, "timestep": timesteps, **conditioning}


class PixArt(Family):
    """A T5 text encoder (with its attention mask) into a DiT; DDPM, and a learned variance: the transformer
    predicts twice the latent channels, of which the first half is the noise."""

    name, denoiser = "pixart", "transformer"

    def prompt_tokenizer(self):
        import inspect

        default = inspect.signature(self.pipeline.encode_prompt).parameters["max_sequence_length"].default
        return self.pipeline.tokenizer, default  # 120 tokens for PixArt-alpha, 300 for PixArt-sigma

    def conditioning(self, texts, batch, device):
        embeds, mask, _, _ = self.pipeline.encode_prompt(texts, do_classifier_free_guidance=False, device=device,
                                                         clean_caption=False)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def inputs(self, noisy, timesteps, conditioning, options):
        extra = {"resolution": None, "aspect_ratio": None}
        if self.module.use_additional_conditions:  # the 1024 px models read the image size and aspect ratio
            height, width = (side * self.pipeline.vae_scale_factor for side in noisy.shape[-2:])
            extra = {"resolution": torch.tensor([[height, width]] * len(noisy), device=noisy.device).float(),
                     "aspect_ratio": torch.tensor([[height / width]] * len(noisy), device=noisy.device)}
        return {"hidden_states": noisy, "timestep": timesteps, "added_cond_kwargs": extra, **conditioning}

    def output(self, prediction, noisy):
        if prediction.shape[1] == 2 * noisy.shape[1]:  # learned sigma: keep the noise half, as diffusers does
            return prediction.chunk(2, dim=1)[0]
        return prediction

    def call_options(self):
        # Resolution binning only knows the 256/512/1024 px models; prompts are not cleaned (that needs bs4
        # and ftfy), in training as in generation.
        return {"clean_caption": False, "use_resolution_binning": self.module.config.sample_size in (32, 64, 128)}


class Flux(Family):
    """CLIP (pooled) and T5 into a transformer over 2 x 2 packed latents, with position ids and (FLUX.1-dev)
    a guidance embedding; flow matching."""

    name, denoiser, encoders, objective_class = "flux", "transformer", ("text_encoder", "text_encoder_2"), FlowMatching
    lora_targets = SD3.lora_targets

    def native_size(self) -> int:
        return self.pipeline.default_sample_size * self.pipeline.vae_scale_factor

    def size_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * 2  # latents are packed 2 x 2

    def prompt_tokenizer(self):
        return self.pipeline.tokenizer_2, 512  # the pipeline's max_sequence_length

    def conditioning(self, texts, batch, device):
        embeds, pooled, text_ids = self.pipeline.encode_prompt(texts, None, device=device)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    def inputs(self, noisy, timesteps, conditioning, options):
        from diffusers import FluxPipeline

        n, channels, height, width = noisy.shape
        guidance = None
        if self.module.config.guidance_embeds:  # FLUX.1-dev: the distilled guidance, as diffusers' scripts set it
            guidance = torch.full((n,), float(options["guidance_scale"]), device=noisy.device)
        return {"hidden_states": FluxPipeline._pack_latents(noisy, n, channels, height, width),
                "timestep": timesteps / 1000, "guidance": guidance, **conditioning,
                "img_ids": FluxPipeline._prepare_latent_image_ids(n, height // 2, width // 2, noisy.device,
                                                                  noisy.dtype)}

    def output(self, prediction, noisy):
        from diffusers import FluxPipeline

        scale = self.pipeline.vae_scale_factor
        return FluxPipeline._unpack_latents(prediction, noisy.shape[-2] * scale, noisy.shape[-1] * scale, scale)


def family_of(pipeline) -> Family:
    """The family of a loaded pipeline; other pipelines are refused, naming the ones supported."""
    from diffusers import (
        FluxPipeline,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionXLPipeline,
    )

    for classes, family in (((StableDiffusionXLPipeline,), SDXL), ((StableDiffusion3Pipeline,), SD3),
                            ((PixArtAlphaPipeline, PixArtSigmaPipeline), PixArt), ((FluxPipeline,), Flux)):
        if isinstance(pipeline, classes):
            return family(pipeline)
    # Stable Diffusion 1.x/2.x and its kin (LCM, ...): a UNet, a VAE and one CLIP text encoder.
    if all(getattr(pipeline, part, None) is not None for part in ("unet", "vae", "text_encoder", "tokenizer")) \
            and getattr(pipeline, "text_encoder_2", None) is None:
        return Family(pipeline)
    raise ModelNotFoundError(f"{type(pipeline).__name__} is not a text-to-image pipeline taskzoo knows: it takes "
                             "Stable Diffusion 1.x/2.x, SDXL, SD3, PixArt-alpha/sigma and Flux pipelines.")

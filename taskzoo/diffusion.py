"""Diffusion machinery for the text-to-image task: the trainable module around a pipeline's parts, EMA
weights, and the image grid that fine-tuning writes at each evaluation."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class DiffusionModel(torch.nn.Module):
    """What fine-tuning trains: the UNet, beside the frozen VAE and text encoder. forward() is the objective,
    so that under DDP the UNet runs inside the wrapper's forward."""

    def __init__(self, unet, vae, text_encoder, noise_scheduler):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.noise_scheduler = noise_scheduler  # DDPM, from the pipeline's scheduler config
        vae.requires_grad_(False)
        text_encoder.requires_grad_(False)

    @torch.no_grad()
    def latents(self, batch: dict, sample: bool) -> torch.Tensor:
        """Scaled latents: a draw from the VAE posterior, or (for evaluation) its mean."""
        if "latent_mean" in batch:  # cached by prepare() with cache_latents=True
            mean, std = batch["latent_mean"], batch["latent_std"]
        else:
            posterior = self.vae.encode(batch["pixel_values"].to(self.vae.dtype)).latent_dist
            mean, std = posterior.mean, posterior.std
        latents = mean + std * torch.randn_like(mean) if sample else mean
        return latents.float() * self.vae.config.scaling_factor

    def forward(self, latents, input_ids, noise, timesteps):
        """The UNet's prediction for the noised latents, and the target it should match."""
        with torch.no_grad():
            hidden = self.text_encoder(input_ids)[0]
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return prediction, noise
        if kind == "v_prediction":
            return prediction, self.noise_scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"Fine-tuning needs prediction_type 'epsilon' or 'v_prediction'; the scheduler has {kind!r}.")


class EMA:
    """An exponential moving average of parameters that can stand in for them. Tensors are swapped, not
    copied, so a large UNet needs no third copy of its weights."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float):
        from diffusers.training_utils import EMAModel

        self.parameters = parameters
        self.average = EMAModel(parameters, decay=decay)

    def step(self) -> None:
        if self.average.shadow_params[0].device != self.parameters[0].device:
            self.average.to(self.parameters[0].device)  # accelerate moved the model after this was made
        self.average.step(self.parameters)

    @contextmanager
    def swapped(self):
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        shadow = self.average.shadow_params
        for i, parameter in enumerate(self.parameters):
            parameter.data, shadow[i] = shadow[i], parameter.data

    def copy_to(self) -> None:
        """Make the average the live weights, for good."""
        self.average.copy_to(self.parameters)


def clip_scores(model, processor, images: list, prompts: list[str], device) -> list[float]:
    """torchmetrics' CLIP score per image, max(100 * cos(image, text), 0), with a transformers CLIPModel."""
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True)
    output = model.to(device)(**inputs.to(device))  # projected, normalised embeddings
    return (100 * (output.image_embeds * output.text_embeds).sum(-1)).clamp(min=0).tolist()


def image_grid(images: list, captions: list[str], columns: int = 4):
    """PIL images in rows of ``columns``, each captioned underneath; small renders are enlarged pixel for pixel."""
    from PIL import Image, ImageDraw

    cell, label, pad = max(128, images[0].width), 14, 2
    rows, width = -(-len(images) // columns), min(columns, len(images))
    grid = Image.new("RGB", (width * (cell + pad) + pad, rows * (cell + label + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = pad + (i % columns) * (cell + pad), pad + (i // columns) * (cell + label + pad)
        grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
        draw.text((x + 1, y + cell + 1), caption[: cell // 6], fill="black")
    return grid

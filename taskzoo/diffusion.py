"""Diffusion machinery for the text-to-image task: the trainable module (the denoiser alone), its LoRA
adapters (added, fused, saved and loaded in diffusers' or peft's format), training images as the scripts
prepare them, EMA weights, CLIP scores, and the image grid that fine-tuning writes at each evaluation.
What differs between the pipeline families is in taskzoo.diffusion_families."""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch


class Denoiser(torch.nn.Module):
    """What fine-tuning trains, prepares and checkpoints: the pipeline's denoiser (a UNet or a transformer)
    alone. The frozen VAE and text encoders stay outside it, so that Accelerate neither wraps (DDP, FSDP,
    DeepSpeed) nor saves them. forward() takes the denoiser's keyword arguments and returns its prediction."""

    def __init__(self, denoiser: torch.nn.Module, save_with=None):
        super().__init__()
        self.denoiser = denoiser
        self.save_with = save_with  # (folder, state_dict) -> writes the task's whole folder with these weights

    def forward(self, **inputs) -> torch.Tensor:
        return self.denoiser(**inputs, return_dict=False)[0]

    def save_pretrained(self, path, state_dict: dict | None = None) -> None:
        """What fine-tuning under FSDP or DeepSpeed calls with the weights gathered from every process's shards
        (checkpoints.save_model): the task's folder, a pipeline or LoRA adapters, holding these weights."""
        self.save_with(Path(path), self.state_dict() if state_dict is None else state_dict)


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LoRA format: "unet." / "transformer." keys
PEFT_WEIGHTS = "adapter_model.safetensors"  # peft's, for denoisers without a diffusers LoRA loader (PixArt)


def has_lora(denoiser: torch.nn.Module, name: str) -> bool:
    return name in getattr(denoiser, "peft_config", {})


def add_lora(denoiser: torch.nn.Module, config, name: str) -> None:
    """peft adapters on the denoiser (what diffusers' add_adapter does, for denoisers that lack it too)."""
    if hasattr(denoiser, "add_adapter"):  # diffusers' PeftAdapterMixin
        denoiser.add_adapter(config, name)
    else:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, denoiser, adapter_name=name)  # sets denoiser.peft_config


def fuse_lora(denoiser: torch.nn.Module, name: str) -> None:
    """Merge the adapters into the weights and remove them: a plain denoiser again."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in denoiser.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[name])
    recurse_remove_peft_layers(denoiser)
    del denoiser.peft_config
    if hasattr(denoiser, "_hf_peft_config_loaded"):
        denoiser._hf_peft_config_loaded = None


def save_lora(denoiser: torch.nn.Module, prefix: str, name: str, path: Path, base_model: str) -> None:
    """The adapters alone: diffusers' format where the denoiser has diffusers' LoRA loader (each pipeline's
    load_lora_weights reads it), else peft's (peft's PeftModel.from_pretrained reads it); and an
    adapter_config.json (rank, alpha, targets) naming the base pipeline."""
    import copy

    from diffusers.loaders.lora_base import LoraBaseMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = copy.deepcopy(denoiser.peft_config[name])
    layers = get_peft_model_state_dict(denoiser, adapter_name=name)
    if hasattr(denoiser, "load_lora_adapter"):
        # What the pipelines' save_lora_weights write, keyed as diffusers' training scripts key them (UNets in
        # diffusers' own naming, transformers in peft's); the metadata keeps lora_alpha, without which
        # diffusers' loader would assume alpha == rank.
        layers = convert_state_dict_to_diffusers(layers) if prefix == "unet" else layers
        LoraBaseMixin._save_lora_weights(path, lora_layers={prefix: layers}, lora_metadata={prefix: config.to_dict()},
                                         weight_name=LORA_WEIGHTS)
    else:
        save_file({f"base_model.model.{key}": value.contiguous() for key, value in layers.items()},
                  str(path / PEFT_WEIGHTS), metadata={"format": "pt"})
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(path))


def lora_base(path: Path) -> str | None:
    """The base pipeline that the LoRA folder ``path`` names; None where ``path`` is not a LoRA folder."""
    import json

    from taskzoo.errors import ModelNotFoundError

    if not ((path / LORA_WEIGHTS).exists() or (path / PEFT_WEIGHTS).exists()):
        return None
    record = path / "adapter_config.json"
    base = json.loads(record.read_text()).get("base_model_name_or_path") if record.exists() else None
    if not base:
        raise ModelNotFoundError(f"LoRA folder {path} does not name its base pipeline (base_model_name_or_path in "
                                 "adapter_config.json).")
    return base


def load_lora(denoiser: torch.nn.Module, prefix: str, name: str, path: Path) -> None:
    """Adapters that :func:`save_lora` wrote, onto the base pipeline's denoiser."""
    if (path / LORA_WEIGHTS).exists():
        denoiser.load_lora_adapter(str(path), prefix=prefix, adapter_name=name, weight_name=LORA_WEIGHTS)
        return
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    add_lora(denoiser, LoraConfig.from_pretrained(str(path)), name)
    weights = {key.removeprefix("base_model.model."): value for key, value in load_file(path / PEFT_WEIGHTS).items()}
    set_peft_model_state_dict(denoiser, weights, adapter_name=name)


def training_pixels(image, size: int) -> tuple[torch.Tensor, list[int]]:
    """An image scaled (shorter side, bilinear) and centre-cropped to ``size``, as CHW in [-1, 1], as diffusers'
    training scripts prepare them; and its size ids (original height and width, crop top and left, target height
    and width), which SDXL reads."""
    from taskzoo.data import load_image

    image = load_image(image)
    pixels = _crop_processor().preprocess(image, size, size, resize_mode="crop")[0]
    # Where that crop took the square from: the processor scales the shorter side to size (flooring the
    # longer) and centres the image on the square.
    width, height = image.size
    scaled = (width * size // height, size) if width >= height else (size, height * size // width)
    left, top = scaled[0] // 2 - size // 2, scaled[1] // 2 - size // 2
    return pixels, [height, width, top, left, size, size]


@cache
def _crop_processor():
    from diffusers.image_processor import VaeImageProcessor

    # Bilinear as the training scripts resize (the processor's default is lanczos); scale factor 1: the task
    # has checked the size, so nothing is rounded to the VAE's multiple.
    return VaeImageProcessor(vae_scale_factor=1, resample="bilinear")


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

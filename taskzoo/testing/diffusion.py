"""The text-to-image testing kit: tiny random pipelines of each family (Stable Diffusion 1.x, SDXL, SD3,
PixArt-alpha, Flux; sizes close to diffusers' get_dummy_components) with tokenizers built offline, and the
toy captioned shapes. Kept here so that tasks/text_to_image.py stays short."""

from __future__ import annotations

import random
from pathlib import Path

import torch

FAMILIES = ("sd", "sdxl", "sd3", "pixart", "flux")
COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("square", "circle", "triangle")
WORDS = ("a", "an", "the", "photo", "of", "on", "white", "background", "small", "big", "blurry", "ugly")
# Every family renders 32 px images from 16 x 16 latents (a VAE that scales by 2), so the toy data fits all.
UNET = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, norm_num_groups=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
CLIP = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=77)
T5 = dict(d_model=64, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)


def tiny_pipeline(path: Path, family: str = "sd") -> Path:
    """A tiny random pipeline of ``family`` whose tokenizers keep the toy captions' words whole, saved at ``path``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}.")
    words = [*COLORS, *SHAPES, *WORDS]
    torch.manual_seed(0)
    pipeline = {"sd": _sd, "sdxl": _sdxl, "sd3": _sd3, "pixart": _pixart, "flux": _flux}[family](words)
    pipeline.save_pretrained(path)
    return Path(path)


def _vae(**options):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, sample_size=32, **options)


def _clip(tokenizer, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, projection_dim=32,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **CLIP)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5_tokenizer(words: list[str]):
    """A T5 (Unigram) tokenizer built offline: ``words`` as whole pieces, letters for any other word."""
    from transformers import T5Tokenizer

    pieces = [*(f"▁{word}" for word in dict.fromkeys(words)), *"abcdefghijklmnopqrstuvwxyz0123456789",
              *(f"▁{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), *((piece, -5.0) for piece in pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, **T5))


def _sd(words):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from taskzoo.testing import clip_tokenizer

    tokenizer = clip_tokenizer(words)
    unet = UNet2DConditionModel(cross_attention_dim=32, attention_head_dim=8, **UNET)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # SD 1.x values
    return StableDiffusionPipeline(unet=unet, vae=_vae(), text_encoder=_clip(tokenizer), tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _sdxl(words):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from taskzoo.testing import clip_tokenizer

    tokenizer = clip_tokenizer(words)
    # The UNet reads both encoders' hidden states side by side (32 + 32), and the second's pooled projection
    # (32) with six size/crop ids of 8 each (80) as its added condition, as SDXL does at full size.
    unet = UNet2DConditionModel(cross_attention_dim=64, attention_head_dim=8, use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=80, **UNET)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(unet=unet, vae=_vae(), text_encoder=_clip(tokenizer), tokenizer=tokenizer,
                                     text_encoder_2=_clip(tokenizer, projection=True), tokenizer_2=tokenizer,
                                     scheduler=scheduler)


def _sd3(words):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from taskzoo.testing import clip_tokenizer

    tokenizer, t5 = clip_tokenizer(words), t5_tokenizer(words)
    # Tokens: T5's hidden states (64) beside the two CLIPs' (32 + 32, padded to 64); pooled: both CLIPs (32 + 32).
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip(tokenizer, projection=True), tokenizer=tokenizer,
        text_encoder_2=_clip(tokenizer, projection=True), tokenizer_2=tokenizer, text_encoder_3=_t5(t5),
        tokenizer_3=t5)


def _pixart(words):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    tokenizer = t5_tokenizer(words)
    # out_channels = 2 x latent channels: the noise and a learned variance, as PixArt-alpha predicts.
    transformer = PixArtTransformer2DModel(sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=4, caption_channels=64, cross_attention_dim=32,
                                           in_channels=4, out_channels=8)
    return PixArtAlphaPipeline(transformer=transformer, vae=_vae(), text_encoder=_t5(tokenizer), tokenizer=tokenizer,
                               scheduler=DPMSolverMultistepScheduler())


def _flux(words):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from taskzoo.testing import clip_tokenizer

    tokenizer, t5 = clip_tokenizer(words), t5_tokenizer(words)
    # 4 latent channels packed 2 x 2 (16); a guidance embedding, as FLUX.1-dev has; rope axes sum to the head size.
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, text_encoder=_clip(tokenizer),
                        tokenizer=tokenizer, text_encoder_2=_t5(t5), tokenizer_2=t5,
                        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                                 use_post_quant_conv=False))


def toy_dataset(n: int = 64, seed: int = 0):
    """32 px coloured shapes on white, placed and sized at random, captioned "a red square" and so on."""
    from datasets import Dataset
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    combos = [(color, shape) for color in COLORS for shape in SHAPES]
    images, texts = [], []
    for i in range(n):
        color, shape = combos[(i + seed) % len(combos)]
        image = Image.new("RGB", (32, 32), "white")
        size = rng.randint(16, 25)
        x, y = rng.randint(0, 32 - size), rng.randint(0, 32 - size)
        box, fill, draw = [x, y, x + size - 1, y + size - 1], COLORS[color], ImageDraw.Draw(image)
        if shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([(x + size / 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=fill)
        images.append(image)
        texts.append(f"a {color} {shape}")
    return Dataset.from_dict({"image": images, "text": texts})

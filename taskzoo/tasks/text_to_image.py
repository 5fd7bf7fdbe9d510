"""text-to-image: Stable Diffusion pipelines (diffusers' AutoPipelineForText2Image).

Predict renders prompts -> ``{"image"}`` (PIL). Each image has its own generator seeded with ``seed``, so it
depends on its prompt, seed and settings, not on its neighbours in a batch (up to float rounding).
Fine-tuning trains the UNet on the noise-prediction objective (epsilon or v-prediction, as the scheduler
config says), the text encoder and VAE frozen: strategy "full", or "lora" (peft adapters on the UNet's
attention, saved as diffusers' ``pytorch_lora_weights.safetensors`` with an ``adapter_config.json`` naming
the base pipeline). ``eval_loss`` is the denoising loss at fixed timesteps with noise seeded by each row's
index: the same model scores the same, whatever the batching or the number of processes.
"""

from __future__ import annotations

import copy
import json
import os
import random
import uuid
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from taskzoo import data as data_utils
from taskzoo import streaming
from taskzoo.errors import DataError, ModelNotFoundError
from taskzoo.diffusion import EMA, DiffusionModel, clip_scores, image_grid
from taskzoo.models import library_bars_hidden
from taskzoo.task import Task

EVAL_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)  # fractions of num_train_timesteps; every row is scored at each
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the UNet's attention projections
LORA_WEIGHTS, ADAPTER = "pytorch_lora_weights.safetensors", "default"
ROW = "_taskzoo_row"  # the row index prepare() adds: it seeds that row's evaluation noise


class TextToImage(Task):
    name = "text-to-image"
    primary_metric = "eval_loss"
    modality = "pipeline"
    model_needs = "a diffusers text-to-image pipeline (model_index.json) or a LoRA folder that taskzoo saved"
    greater_is_better = False
    required_columns = ("image", "text")
    example_input, outputs_images = "a red square", True
    playground_form = {"fields": [
        {"id": "prompt", "type": "text", "label": "Prompt", "value": "a red square on a white background",
         "to": "inputs"},
        {"id": "seed", "type": "number", "label": "Seed", "value": 0, "to": "parameters.seed"},
        {"id": "steps", "type": "number", "label": "Steps", "value": 25, "to": "parameters.num_inference_steps"},
        {"id": "guidance", "type": "number", "label": "Guidance", "value": 7.5, "step": 0.5,
         "to": "parameters.guidance_scale"}], "output": "image"}
    default_batch_size = 4
    default_learning_rate = 1e-5  # full fine-tuning; LoRA usually wants about 1e-4
    strategies = ("full", "lora")
    # LoRA as diffusers' train_text_to_image_lora.py (rank 4, alpha = rank); saved as adapters alone by default.
    finetune_options = {**Task.finetune_options, "lora_rank": 4, "lora_alpha": 4, "save_merged": False,
                        "ema": False, "ema_decay": 0.9999, "snr_gamma": None, "cache_latents": False,
                        "resolution": None, "validation_prompts": None, "validation_inference_steps": 25}
    demo_config = dict(train_size=32, eval_size=8, epochs=2, batch_size=8, learning_rate=4e-3, warmup_steps=1,
                       validation_inference_steps=4)

    def __init__(self, pipeline, *, base_model, resolution=None, clip=None, clip_inference_steps=25, **kwargs):
        from diffusers import DDPMScheduler

        if any(getattr(pipeline, part, None) is None for part in ("unet", "vae", "text_encoder", "tokenizer")):
            raise ModelNotFoundError(f"{type(pipeline).__name__} is not a Stable Diffusion UNet pipeline "
                                     "(unet, vae, text_encoder, tokenizer).")
        model = DiffusionModel(pipeline.unet, pipeline.vae, pipeline.text_encoder,
                               DDPMScheduler.from_config(pipeline.scheduler.config))
        super().__init__(model, pipeline.tokenizer, **kwargs)
        self.pipeline = pipeline  # around the same modules: fine-tuning shows in predict
        pipeline.set_progress_bar_config(disable=True)
        self.base_model = base_model  # the pipeline folder a LoRA applies to
        self.native_size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
        self.resolution = self._check_size(self.native_size if resolution is None else resolution, "resolution")
        self.clip, self.clip_inference_steps = clip, clip_inference_steps
        self.training_options, self._ema, self._validation_prompts = dict(self.finetune_options), None, []

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, resolution=None, clip_model=None,
                        clip_inference_steps=25):
        from diffusers import AutoPipelineForText2Image

        from taskzoo.models import resolve_model

        path = base = Path(path)
        if (path / LORA_WEIGHTS).exists():
            record = path / "adapter_config.json"
            base = json.loads(record.read_text()).get("base_model_name_or_path") if record.exists() else None
            if not base:
                raise ModelNotFoundError(f"LoRA folder {path} does not name its base pipeline "
                                         "(base_model_name_or_path in adapter_config.json).")
            base = resolve_model(base)
        elif not (path / "model_index.json").exists():
            raise ModelNotFoundError(f"{path} is neither a diffusers pipeline (model_index.json) nor a LoRA "
                                     f"folder ({LORA_WEIGHTS}).")
        pipeline = AutoPipelineForText2Image.from_pretrained(str(base), trust_remote_code=trust_remote_code)
        if base != path:
            # Our LoRA holds UNet weights only (pipeline.load_lora_weights would warn about the text encoder).
            pipeline.unet.load_lora_adapter(str(path), prefix="unet", adapter_name=ADAPTER, weight_name=LORA_WEIGHTS)
        clip = None
        if clip_model is not None:
            from transformers import CLIPModel, CLIPProcessor

            clip_path = resolve_model(clip_model)
            clip = (CLIPModel.from_pretrained(clip_path).eval(), CLIPProcessor.from_pretrained(clip_path))
        return cls(pipeline, base_model=str(Path(base).resolve()), resolution=resolution, clip=clip,
                   clip_inference_steps=clip_inference_steps, source=str(path), device=device)

    def _has_lora(self) -> bool:
        return ADAPTER in getattr(self.pipeline.unet, "peft_config", {})

    @library_bars_hidden()
    def save(self, path):
        """The whole pipeline folder; with a LoRA, the adapter alone in diffusers' format."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._ema_weights():
            if not self._has_lora():
                self.pipeline.save_pretrained(path)
                return path
            if self.training_options.get("save_merged"):  # a plain pipeline, the LoRA fused into a UNet copy
                unet, merged = self.pipeline.unet, copy.deepcopy(self.pipeline.unet)
                merged.fuse_lora(adapter_names=[ADAPTER])
                merged.unload_lora()
                self.pipeline.unet = merged
                try:
                    self.pipeline.save_pretrained(path)
                finally:
                    self.pipeline.unet = unet
                return path
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            unet = self.pipeline.unet
            config = copy.deepcopy(unet.peft_config[ADAPTER])
            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER))
            # The metadata keeps lora_alpha: without it diffusers' loader assumes alpha == rank.
            type(self.pipeline).save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True,
                                                  unet_lora_adapter_metadata=config.to_dict())
        config.base_model_name_or_path = self.base_model
        config.save_pretrained(str(path))  # adapter_config.json: rank, alpha, targets and the base pipeline
        return path

    # ----------------------------------------------------------------------------------------- data
    def read_path(self, path):
        """An image folder with metadata.jsonl (file_name, text), a folder of such split folders, or a table."""
        return data_utils.read_metadata_folder(path, "image", example='{"file_name": "0001.png", "text": "a red square"}')

    def prepare_for_training(self, dataset) -> None:
        options = self.training_options
        if options["resolution"] is not None:
            self.resolution = self._check_size(options["resolution"], "resolution")
        prompts = options["validation_prompts"]
        # Default: the first captions of the training data (its first rows: a stream has no end).
        prompts = list(dict.fromkeys(streaming.head(dataset, 256)["text"]))[:4] if prompts is None else prompts
        self._validation_prompts = [prompts] if isinstance(prompts, str) else list(prompts)

    def prepare(self, dataset, training: bool):
        if getattr(self.pipeline, "text_encoder_2", None) is not None:
            raise ValueError(f"Fine-tuning and evaluation take SD 1.x/2.x pipelines; {type(self.pipeline).__name__} "
                             "has two text encoders (predict works).")
        texts = dataset["text"]
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise DataError(f"Column 'text' must hold captions (strings); row {bad[0]} has {texts[bad[0]]!r} "
                            f"({len(bad)} such rows).")
        dataset = dataset.remove_columns([ROW]) if ROW in dataset.column_names else dataset
        dataset = dataset.add_column(ROW, list(range(len(dataset))))
        if training and self.training_options.get("cache_latents"):
            dataset = dataset.map(self._encode_images, batched=True, batch_size=self.default_batch_size,
                                  remove_columns=["image"], desc="Caching VAE latents",
                                  new_fingerprint=uuid.uuid4().hex)  # hashing the transform would pickle the model
        return dataset

    @torch.no_grad()
    def _encode_images(self, rows: dict) -> dict:
        pixels = torch.stack([self._pixels(image) for image in rows["image"]]).to(self.device, self.model.vae.dtype)
        posterior = self.model.vae.encode(pixels).latent_dist
        return {"latent_mean": posterior.mean.float().cpu().numpy(), "latent_std": posterior.std.float().cpu().numpy()}

    def _pixels(self, image) -> torch.Tensor:
        """An image scaled (shorter side) and centre-cropped to the resolution, as CHW in [-1, 1]."""
        from PIL import Image

        image, size = data_utils.load_image(image), self.resolution
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.BILINEAR)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)

    def collate(self, examples: list[dict]) -> dict:
        texts, limit = [row["text"] for row in examples], self.processor.model_max_length
        batch = {"text": texts, "row": torch.tensor([row.get(ROW, 0) for row in examples]),
                 "input_ids": self.processor(texts, padding="max_length", max_length=limit, truncation=True,
                                             return_tensors="pt").input_ids}
        # CLIP reads 77 tokens; longer captions are cut, as the pipeline cuts prompts. Counted for one warning.
        self.count_truncated(sum(len(ids) > limit for ids in self.processor(texts, verbose=False).input_ids))
        if "latent_mean" in examples[0]:
            for key in ("latent_mean", "latent_std"):
                batch[key] = torch.from_numpy(np.asarray([row[key] for row in examples], dtype=np.float32))
        else:
            batch["pixel_values"] = torch.stack([self._pixels(row["image"]) for row in examples])
        return batch

    # ------------------------------------------------------------------------------------- training
    def finetune(self, train, eval=None, columns=None, **config):
        if config.get("ema") and (config.get("restore_best") or config.get("early_stopping_patience")):
            raise ValueError("ema=True cannot be combined with restore_best or early stopping: the weights they "
                             "restore are the live ones, not the average.")
        try:
            result = super().finetune(train, eval=eval, columns=columns, **config)
        except BaseException:
            self._ema = None
            raise
        if self._ema is not None:  # from here on the model is the average, as evaluated and saved
            self._ema.copy_to()
            self._ema = None
        return result

    def apply_strategy(self, strategy: str) -> None:
        if strategy not in self.strategies:
            raise ValueError(f"text-to-image supports strategy 'full' or 'lora'; got {strategy!r}.")
        options, unet = self.training_options, self.model.unet
        if strategy == "full":
            if self._has_lora():  # a loaded LoRA is merged into the weights, which now all train
                self.pipeline.fuse_lora(adapter_names=[ADAPTER])
                self.pipeline.unload_lora_weights()
            unet.requires_grad_(True)
        else:
            from peft import LoraConfig

            if not self._has_lora():  # else: go on training the loaded adapter
                unet.add_adapter(LoraConfig(r=options["lora_rank"], lora_alpha=options["lora_alpha"],
                                            lora_dropout=options.get("lora_dropout", 0.0), init_lora_weights="gaussian",
                                            target_modules=LORA_TARGETS), ADAPTER)
            for name, parameter in unet.named_parameters():
                parameter.requires_grad_("lora_" in name)
        self._ema = None
        if options["ema"]:
            self._ema = EMA([parameter for parameter in unet.parameters() if parameter.requires_grad],
                            decay=options["ema_decay"])

    def on_optimizer_step(self, model) -> None:
        if self._ema is not None:
            self._ema.step()

    def _ema_weights(self):
        """With EMA on, the average stands in for the live weights while evaluating, rendering and saving."""
        return self._ema.swapped() if self._ema is not None else nullcontext()

    def training_step(self, model, batch):
        bare = getattr(model, "module", model)  # inside a DDP wrapper
        scheduler = bare.noise_scheduler
        latents = bare.latents(batch, sample=True)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=latents.device)
        prediction, target = model(latents, batch["input_ids"], torch.randn_like(latents), timesteps)
        losses = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        gamma = self.training_options.get("snr_gamma")
        if gamma:  # min-SNR-gamma weighting (Hang et al. 2023), as in diffusers' train_text_to_image.py
            from diffusers.training_utils import compute_snr

            snr = compute_snr(scheduler, timesteps)
            losses = losses * snr.clamp(max=gamma) / (snr + 1 if scheduler.config.prediction_type == "v_prediction"
                                                      else snr)
        return {"loss": losses.mean(), "output": prediction}

    def eval_step(self, model, batch):
        bare = getattr(model, "module", model)
        with self._ema_weights():
            latents = bare.latents(batch, sample=False)
            noise = torch.stack([torch.randn((len(EVAL_TIMESTEPS), *latents.shape[1:]),
                                             generator=torch.Generator().manual_seed(int(row)))
                                 for row in batch["row"]]).to(latents.device)
            losses = torch.zeros(len(latents), device=latents.device)
            for k, fraction in enumerate(EVAL_TIMESTEPS):
                timesteps = torch.full((len(latents),), int(fraction * bare.noise_scheduler.config.num_train_timesteps),
                                       device=latents.device)
                prediction, target = model(latents, batch["input_ids"], noise[:, k], timesteps)
                losses += F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            results = [{"loss": loss / len(EVAL_TIMESTEPS)} for loss in losses.tolist()]
            if self.clip is not None or self.keep_metric_inputs:  # keep_metric_inputs: your metrics get the images
                images = self._render(batch["text"], self.clip_inference_steps, seeds=batch["row"].tolist())
                scores = clip_scores(*self.clip, images, batch["text"], self.pipeline.device) if self.clip else None
                for index, result in enumerate(results):
                    if scores is not None:
                        result["clip_score"] = scores[index]
                    if self.keep_metric_inputs:
                        result["image"] = images[index]
        return results, list(batch["text"]) if self.keep_metric_inputs else [None] * len(results)

    def compute_metrics(self, predictions, references):
        scores = {"eval_loss": float(np.mean([p["loss"] for p in predictions]))}
        if predictions and "clip_score" in predictions[0]:
            scores["clip_score"] = float(np.mean([p["clip_score"] for p in predictions]))
        return scores

    def metric_inputs(self, predictions, references):
        """Your metrics get the images rendered for the prompts (PIL; fixed seeds, clip_inference_steps) and the prompts."""
        return [prediction["image"] for prediction in predictions], references

    def _render(self, prompts, steps: int, seeds):
        return self.pipeline(list(prompts), num_inference_steps=steps, height=self.resolution, width=self.resolution,
                             generator=[torch.Generator().manual_seed(int(seed)) for seed in seeds]).images

    def on_evaluate(self, model, output_dir, step) -> None:
        """The validation prompts, rendered with fixed seeds (grids compare across steps), as one PNG."""
        if not self._validation_prompts:
            return
        was_training = self.pipeline.unet.training
        self.pipeline.unet.eval()
        try:
            with self._ema_weights(), torch.no_grad():  # not inference_mode: training goes on (see Task.predict)
                images = self._render(self._validation_prompts, self.training_options["validation_inference_steps"],
                                      seeds=range(len(self._validation_prompts)))
        finally:
            self.pipeline.unet.train(was_training)
        image_grid(images, self._validation_prompts).save(Path(output_dir) / f"validation-step-{step:06d}.png")

    # -------------------------------------------------------------------------------------- predict
    def is_single(self, inputs) -> bool:
        return isinstance(inputs, str)

    def input_of(self, row):
        return row["text"]

    def predict(self, inputs, batch_size=None, progress=None, **options):
        if isinstance(inputs, (list, tuple)) and not inputs:
            raise ValueError("text-to-image needs at least one prompt; got an empty list.")
        return super().predict(inputs, batch_size=batch_size, progress=progress, **options)

    def _check_size(self, value, name: str) -> int:
        multiple = max(8, self.pipeline.vae_scale_factor)  # the pipeline itself only checks % 8
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple} (this pipeline's VAE scales by "
                             f"{self.pipeline.vae_scale_factor}); got {value!r}.")
        return value

    def compile_target(self):
        return self.pipeline, "unet"  # where the time goes: one UNet pass per denoising step

    def predict_batch(self, prompts, negative_prompt=None, num_inference_steps=50, guidance_scale=7.5,
                      height=None, width=None, seed=None):
        bad = [prompt for prompt in prompts if not isinstance(prompt, str)]
        if bad:
            raise ValueError(f"text-to-image takes prompts as strings; got {type(bad[0]).__name__}: {bad[0]!r:.80}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt is one string, used for every prompt; got {negative_prompt!r:.80}")
        height = self._check_size(self.native_size if height is None else height, "height")
        width = self._check_size(self.native_size if width is None else width, "width")
        # One generator per image, all seeded alike: an image's noise does not depend on what shares its batch.
        generator = None if seed is None else [torch.Generator().manual_seed(seed) for _ in prompts]
        negative = None if negative_prompt is None else [negative_prompt] * len(prompts)
        images = self.pipeline(list(prompts), negative_prompt=negative, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, height=height, width=width, generator=generator).images
        return [{"image": image} for image in images]

    # ---------------------------------------------------------------------------------- testing kit
    COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
    SHAPES = ("square", "circle", "triangle")
    WORDS = ("a", "an", "the", "photo", "of", "on", "white", "background", "small", "big", "blurry", "ugly")

    @staticmethod
    def tiny_model(path: str | os.PathLike) -> Path:
        """A tiny Stable Diffusion pipeline (diffusers' get_dummy_components sizes), 32 px, saved at ``path``."""
        from taskzoo.testing.diffusion import tiny_stable_diffusion

        return tiny_stable_diffusion(Path(path), [*TextToImage.COLORS, *TextToImage.SHAPES, *TextToImage.WORDS])

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
        """32 px coloured shapes on white, placed and sized at random, captioned "a red square" and so on."""
        from PIL import Image, ImageDraw

        cls, rng = TextToImage, random.Random(seed)
        combos = [(color, shape) for color in cls.COLORS for shape in cls.SHAPES]
        images, texts = [], []
        for i in range(n):
            color, shape = combos[(i + seed) % len(combos)]
            image = Image.new("RGB", (32, 32), "white")
            size = rng.randint(16, 25)
            x, y = rng.randint(0, 32 - size), rng.randint(0, 32 - size)
            box, fill, draw = [x, y, x + size - 1, y + size - 1], cls.COLORS[color], ImageDraw.Draw(image)
            if shape == "square":
                draw.rectangle(box, fill=fill)
            elif shape == "circle":
                draw.ellipse(box, fill=fill)
            else:
                draw.polygon([(x + size / 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=fill)
            images.append(image)
            texts.append(f"a {color} {shape}")
        return Dataset.from_dict({"image": images, "text": texts})

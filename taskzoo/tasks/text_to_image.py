"""text-to-image: diffusers pipelines of five families (AutoPipelineForText2Image): Stable Diffusion 1.x/2.x,
SDXL, SD3, PixArt-alpha/sigma and Flux.

Predict renders prompts -> ``{"image"}`` (PIL). Each image has its own generator seeded with ``seed``, so it
depends on its prompt, seed and settings, not on its neighbours in a batch (up to float rounding).
Fine-tuning trains the denoiser (UNet or transformer) in its family's objective (taskzoo.diffusion_families:
noise or velocity prediction for the UNet families and PixArt, flow matching for SD3 and Flux); the text
encoders and VAE stay frozen, outside the module that Accelerate prepares and checkpoints. Strategy "full",
or "lora" (peft adapters on the denoiser's attention, saved as diffusers' ``pytorch_lora_weights.safetensors``,
PixArt's as peft's ``adapter_model.safetensors``, with an ``adapter_config.json`` naming the base pipeline).
``eval_loss`` is the loss of the family's objective at fixed points of the schedule with noise seeded by each
row's index: the same model scores the same, whatever the batching or the number of processes.
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from taskzoo import data as data_utils, streaming
from taskzoo.diffusion import (
    EMA,
    LORA_WEIGHTS,
    PEFT_WEIGHTS,
    Denoiser,
    add_lora,
    clip_scores,
    fuse_lora,
    has_lora,
    image_grid,
    load_lora,
    lora_base,
    save_lora,
    training_pixels,
)
from taskzoo.diffusion_families import family_of
from taskzoo.errors import DataError, ModelNotFoundError
from taskzoo.models import library_bars_hidden
from taskzoo.task import Task

EVAL_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # noise levels along the schedule; every row is scored at each
ADAPTER = "default"  # the name of the LoRA adapter that fine-tuning adds and save() writes
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
    supported_strategies = ("full", "lora")
    # LoRA as diffusers' train_text_to_image_lora.py (rank 4, alpha = rank); saved as adapters alone by default.
    # Flow matching (SD3, Flux) samples timesteps and weights losses as diffusers' SD3/Flux scripts' defaults.
    finetune_options = {**Task.finetune_options, "lora_rank": 4, "lora_alpha": 4, "save_merged": False,
                        "ema": False, "ema_decay": 0.9999, "snr_gamma": None, "cache_latents": False,
                        "resolution": None, "validation_prompts": None, "validation_inference_steps": 25,
                        "weighting_scheme": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29,
                        "guidance_scale": 3.5}
    demo_config = dict(train_size=32, eval_size=8, epochs=2, batch_size=8, learning_rate=4e-3, warmup_steps=1,
                       validation_inference_steps=4)

    def __init__(self, pipeline, *, base_model, resolution=None, clip=None, clip_inference_steps=25, **kwargs):
        self.family = family_of(pipeline)
        for part in self.family.frozen().values():
            part.requires_grad_(False)
        super().__init__(Denoiser(self.family.module, save_with=self._save_gathered), processor=None, **kwargs)
        self.pipeline = pipeline.to(self.device)  # its tokenizers, and the trained modules: predict shows training
        pipeline.set_progress_bar_config(disable=True)
        self.base_model = base_model  # the pipeline folder a LoRA applies to, and frozen parts reload from
        self.resolution = self._check_size(self.family.native_size() if resolution is None else resolution,
                                           "resolution")
        self.clip, self.clip_inference_steps = clip, clip_inference_steps
        self._ema, self._validation_prompts = None, []
        self._cast, self._mixed = {}, None  # while fine-tuning in mixed precision: cast part -> own dtype; the dtype

    @property
    def native_size(self) -> int:
        """The size predict renders when not told: ``resolution`` (default: the model's own)."""
        return self.resolution

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, resolution=None, clip_model=None,
                        clip_inference_steps=25):
        from diffusers import AutoPipelineForText2Image

        from taskzoo.models import resolve_model

        path = Path(path)
        base = lora_base(path)  # a LoRA folder names its base pipeline
        base = path if base is None else resolve_model(base)
        if base == path and not (path / "model_index.json").exists():
            raise ModelNotFoundError(f"{path} is neither a diffusers pipeline (model_index.json) nor a LoRA "
                                     f"folder ({LORA_WEIGHTS} or {PEFT_WEIGHTS}).")
        pipeline = AutoPipelineForText2Image.from_pretrained(str(base), trust_remote_code=trust_remote_code)
        if base != path:  # our LoRA holds the denoiser's adapters only
            name = family_of(pipeline).denoiser
            load_lora(getattr(pipeline, name), name, ADAPTER, path)
        clip = None
        if clip_model is not None:
            from transformers import CLIPModel, CLIPProcessor

            clip_path = resolve_model(clip_model)
            clip = (CLIPModel.from_pretrained(clip_path).eval(), CLIPProcessor.from_pretrained(clip_path))
        return cls(pipeline, base_model=str(Path(base).resolve()), resolution=resolution, clip=clip,
                   clip_inference_steps=clip_inference_steps, source=str(path), device=device)

    def _has_lora(self) -> bool:
        return has_lora(self.family.module, ADAPTER)

    @library_bars_hidden()
    def save(self, path):
        """The whole pipeline folder; with a LoRA, the adapter alone (see taskzoo.diffusion.save_lora)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        name, denoiser = self.family.denoiser, self.family.module
        with self._ema_weights():
            if self._has_lora() and not self.training_options.get("save_merged"):
                save_lora(denoiser, name, ADAPTER, path, self.base_model)
                return path
            merged = None
            if self._has_lora():  # a plain pipeline, the LoRA fused into a copy of the denoiser
                merged = copy.deepcopy(denoiser)
                fuse_lora(merged, ADAPTER)
            self.family.save(path, merged)
        for part in self._cast:  # cast for mixed precision while fine-tuning: the exact weights are the base's
            shutil.rmtree(path / part)
            shutil.copytree(Path(self.base_model) / part, path / part)
        return path

    def _save_gathered(self, path: Path, state_dict: dict) -> None:
        """save(), with the denoiser's weights gathered from FSDP or DeepSpeed shards (``denoiser.`` keys), loaded
        into a plain copy of the denoiser (the live one holds this process's shards only)."""
        live = self.family.module
        gathered = type(live).from_config(live.config)
        if self._has_lora():
            add_lora(gathered, copy.deepcopy(live.peft_config[ADAPTER]), ADAPTER)
        gathered.load_state_dict({key.removeprefix("denoiser."): value for key, value in state_dict.items()})
        with self.family.standing_in(gathered):
            self.save(path)

    @contextmanager
    def frozen_parts(self, device, dtype):
        """The VAE and text encoders on the loop's device, cast to its mixed-precision dtype as diffusers'
        scripts cast them (the VAE stays float32 under fp16 where its config says force_upcast). Cast parts
        are reloaded from the base pipeline afterwards: predict and save see the exact weights again."""
        self._cast = self.family.place_frozen(device, dtype)
        self._mixed = dtype if self._cast else None
        try:
            yield
        finally:
            cast, self._cast, self._mixed = self._cast, {}, None
            self.family.restore_frozen(cast, self.base_model, self.device)

    # ----------------------------------------------------------------------------------------- data
    def read_path(self, path):
        """An image folder with metadata.jsonl (file_name, text), a folder of such split folders, or a table."""
        return data_utils.read_metadata_folder(path, "image",
                                               example='{"file_name": "0001.png", "text": "a red square"}')

    def prepare_for_training(self, dataset) -> None:
        options = self.training_options
        if options["resolution"] is not None:
            self.resolution = self._check_size(options["resolution"], "resolution")
        if options["snr_gamma"] and self.family.objective_class.__name__ == "FlowMatching":
            raise ValueError(f"snr_gamma weights DDPM losses; {self.family.name} trains by flow matching, "
                             "weighted by weighting_scheme.")
        prompts = options["validation_prompts"]
        # Default: the first captions of the training data (its first rows: a stream has no end).
        prompts = list(dict.fromkeys(streaming.head(dataset, 256)["text"]))[:4] if prompts is None else prompts
        self._validation_prompts = [prompts] if isinstance(prompts, str) else list(prompts)

    def prepare(self, dataset, training: bool):
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
        vae = self.pipeline.vae
        pixels, size_ids = zip(*(training_pixels(image, self.resolution) for image in rows["image"]))
        posterior = vae.encode(torch.stack(pixels).to(vae.device, vae.dtype)).latent_dist
        return {"latent_mean": posterior.mean.float().cpu().numpy(), "latent_std": posterior.std.float().cpu().numpy(),
                "size_ids": list(size_ids)}

    def collate(self, examples: list[dict]) -> dict:
        texts = [row["text"] for row in examples]
        batch = {"text": texts, "row": torch.tensor([row.get(ROW, 0) for row in examples])}
        # Captions longer than the text encoder reads are cut, as the pipeline cuts prompts: counted for one warning.
        tokenizer, limit = self.family.prompt_tokenizer()
        self.count_truncated(sum(len(ids) > limit for ids in tokenizer(texts, verbose=False).input_ids))
        if "latent_mean" in examples[0]:
            for key in ("latent_mean", "latent_std"):
                batch[key] = torch.from_numpy(np.asarray([row[key] for row in examples], dtype=np.float32))
            batch["size_ids"] = torch.tensor([row["size_ids"] for row in examples])
        else:
            pixels, size_ids = zip(*(training_pixels(row["image"], self.resolution) for row in examples))
            batch["pixel_values"], batch["size_ids"] = torch.stack(pixels), torch.tensor(size_ids)
        return batch

    # ------------------------------------------------------------------------------------- training
    def finetune(self, train, eval=None, columns=None, **config):
        if config.get("ema") and (config.get("restore_best") or config.get("early_stopping_patience")):
            raise ValueError("ema=True cannot be combined with restore_best or early stopping: the weights they "
                             "restore are the live ones, not the average.")
        try:
            result = super().finetune(train, eval=eval, columns=columns, **config)
            if self._ema is not None:  # from here on the model is the average, as evaluated and saved
                self._ema.copy_to()
        finally:
            self._ema = None
        return result

    def apply_strategy(self, strategy: str) -> None:
        if strategy not in self.supported_strategies:
            raise ValueError(f"text-to-image supports strategy 'full' or 'lora' (the denoiser is the whole trained "
                             f"model: no head to train alone); got {strategy!r}.")
        options, denoiser = self.training_options, self.family.module
        if strategy == "full":
            if self._has_lora():  # a loaded LoRA is merged into the weights, which now all train
                fuse_lora(denoiser, ADAPTER)
            denoiser.requires_grad_(True)
        else:
            from peft import LoraConfig

            if not self._has_lora():  # else: go on training the loaded adapter
                config = LoraConfig(r=options["lora_rank"], lora_alpha=options["lora_alpha"],
                                    lora_dropout=options.get("lora_dropout", 0.0), init_lora_weights="gaussian",
                                    target_modules=list(self.family.lora_targets))
                add_lora(denoiser, config, ADAPTER)
            for name, parameter in denoiser.named_parameters():
                parameter.requires_grad_("lora_" in name)
        self._ema = None
        if options["ema"]:
            self._ema = EMA([parameter for parameter in denoiser.parameters() if parameter.requires_grad],
                            decay=options["ema_decay"])

    def on_optimizer_step(self, model) -> None:
        if self._ema is not None:
            self._ema.step()

    def _ema_weights(self):
        """With EMA on, the average stands in for the live weights while evaluating, rendering and saving."""
        return self._ema.swapped() if self._ema is not None else nullcontext()

    def training_step(self, model, batch):
        family = self.family
        latents, objective = family.latents(batch, sample=True), family.objective(self.training_options)
        timesteps = objective.draw(len(latents), latents.device)
        losses = family.losses(model, objective, latents, torch.randn_like(latents), timesteps,
                               family.encode(list(batch["text"]), batch, latents.device), self.training_options)
        weights = objective.weights(timesteps)
        return {"loss": (losses if weights is None else losses * weights.to(losses.device)).mean(), "output": None}

    def eval_step(self, model, batch):
        family = self.family
        with self._ema_weights():
            latents, objective = family.latents(batch, sample=False), family.objective(self.training_options)
            conditioning, n = family.encode(list(batch["text"]), batch, latents.device), len(latents)
            noise = torch.stack([torch.randn((len(EVAL_FRACTIONS), *latents.shape[1:]),
                                             generator=torch.Generator().manual_seed(int(row)))
                                 for row in batch["row"]]).to(latents.device)
            losses = sum(family.losses(model, objective, latents, noise[:, k], objective.fixed(at, n, noise.device),
                                       conditioning, self.training_options) for k, at in enumerate(EVAL_FRACTIONS))
            results = [{"loss": loss / len(EVAL_FRACTIONS)} for loss in losses.tolist()]
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
        """Your metrics get the images rendered for the prompts (PIL; fixed seeds, clip_inference_steps) and the
        prompts."""
        return [prediction["image"] for prediction in predictions], references

    def _render(self, prompts, steps: int, seeds):
        # While fine-tuning in mixed precision the frozen parts are cast: the pipeline runs under autocast.
        with torch.autocast(self.pipeline.device.type, dtype=self._mixed) if self._mixed else nullcontext():
            generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
            return self.pipeline(list(prompts), num_inference_steps=steps, height=self.resolution,
                                 width=self.resolution, generator=generators, **self.family.call_options()).images

    def on_evaluate(self, model, output_dir, step) -> None:
        """The validation prompts, rendered with fixed seeds (grids compare across steps), as one PNG."""
        if not self._validation_prompts:
            return
        denoiser = self.family.module
        was_training = denoiser.training
        denoiser.eval()
        try:
            with self._ema_weights(), torch.no_grad():  # not inference_mode: training goes on (see Task.predict)
                images = self._render(self._validation_prompts, self.training_options["validation_inference_steps"],
                                      seeds=range(len(self._validation_prompts)))
        finally:
            denoiser.train(was_training)
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
        multiple, scale = max(8, self.family.size_multiple()), self.pipeline.vae_scale_factor  # the pipelines check % 8
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
            side = multiple // scale
            patches = f", and its denoiser reads {side} x {side} latent patches" if multiple > max(8, scale) else ""
            raise ValueError(f"{name} must be a positive multiple of {multiple} (this pipeline's VAE scales by "
                             f"{scale}{patches}); got {value!r}.")
        return value

    def compile_target(self):
        return self.pipeline, self.family.denoiser  # where the time goes: one denoiser pass per step

    def predict_batch(self, prompts, negative_prompt=None, num_inference_steps=None, guidance_scale=None,
                      height=None, width=None, seed=None, true_cfg_scale=None):
        bad = [prompt for prompt in prompts if not isinstance(prompt, str)]
        if bad:
            raise ValueError(f"text-to-image takes prompts as strings; got {type(bad[0]).__name__}: {bad[0]!r:.80}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt is one string, used for every prompt; got {negative_prompt!r:.80}")
        flux, options = self.family.name == "flux", dict(self.family.call_options())
        if true_cfg_scale is not None and not flux:
            raise ValueError("true_cfg_scale is Flux's classifier-free guidance; this pipeline's is guidance_scale.")
        if flux and negative_prompt is not None and not (true_cfg_scale or 0) > 1:
            raise ValueError("Flux's guidance_scale is distilled guidance, which takes no negative prompt: pass "
                             "true_cfg_scale > 1 (true classifier-free guidance, two passes a step) with it.")
        # None: the pipeline's own default (50 steps and guidance 7.5 for SD 1.x, 28 and 3.5 for Flux, ...).
        options.update({key: value for key, value in (("num_inference_steps", num_inference_steps),
                                                      ("guidance_scale", guidance_scale),
                                                      ("true_cfg_scale", true_cfg_scale)) if value is not None})
        height = self._check_size(self.native_size if height is None else height, "height")
        width = self._check_size(self.native_size if width is None else width, "width")
        # One generator per image, all seeded alike: an image's noise does not depend on what shares its batch.
        generator = None if seed is None else [torch.Generator().manual_seed(seed) for _ in prompts]
        if negative_prompt is not None:  # else the pipeline's default (None, or "" for PixArt)
            options["negative_prompt"] = [negative_prompt] * len(prompts)
        images = self.pipeline(list(prompts), height=height, width=width, generator=generator, **options).images
        return [{"image": image} for image in images]

    # ---------------------------------------------------------------------------------- testing kit
    @staticmethod
    def tiny_model(path: str | os.PathLike, family: str = "sd") -> Path:
        """A tiny random pipeline of ``family`` ("sd", "sdxl", "sd3", "pixart" or "flux"; diffusers'
        get_dummy_components sizes) that renders 32 px images (Flux: at resolution=32), saved at ``path``."""
        from taskzoo.testing.diffusion import tiny_pipeline

        return tiny_pipeline(Path(path), family)

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0):
        """32 px coloured shapes on white, placed and sized at random, captioned "a red square" and so on."""
        from taskzoo.testing.diffusion import toy_dataset

        return toy_dataset(n, seed)

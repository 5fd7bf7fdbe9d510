"""text-to-image beyond Stable Diffusion 1.x: SDXL, SD3, PixArt-alpha and Flux, each as a tiny random pipeline
(32 px). Each family predicts, fine-tunes (full and LoRA) in its own objective, scores a deterministic
eval_loss, and saves folders that taskzoo and plain diffusers (or peft) open to the same images."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import taskzoo
from taskzoo.testing import tiny_model, toy_dataset

TASK = "text-to-image"
FAMILIES = ["sdxl", "sd3", "pixart", "flux"]
PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "pixart": "PixArtAlphaPipeline",
             "flux": "FluxPipeline"}
FAST = dict(num_inference_steps=3, seed=0, batch_size=1)
PROMPTS = ["a red square", "a green triangle"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def held_out():
    return toy_dataset(TASK, 8, seed=1)


@pytest.fixture(scope="module")
def base_paths(tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            built[family] = tiny_model(TASK, tmp_path_factory.mktemp(family), family=family)
        return built[family]

    return get


def load(path):
    return taskzoo.load(TASK, model=path, device="cpu", resolution=32)  # Flux's own size is 256 px


def pixels(outputs):
    return [np.asarray(output["image"]) for output in outputs]


def diffusers_images(pipeline, family, prompts=PROMPTS):
    """What plain diffusers renders with predict's settings (FAST)."""
    options = {"clean_caption": False, "use_resolution_binning": False} if family == "pixart" else {}
    return [np.asarray(pipeline(prompt, num_inference_steps=3, height=32, width=32, **options,
                                generator=torch.Generator().manual_seed(0)).images[0]) for prompt in prompts]


@pytest.fixture(scope="module", params=FAMILIES)
def tuned(request, base_paths, held_out, tmp_path_factory):
    """Each family's tiny pipeline fully fine-tuned once (checkpoints at each evaluation)."""
    family = request.param
    zoo = load(base_paths(family))
    before = zoo.evaluate(held_out)
    output_dir = tmp_path_factory.mktemp(f"{family}_run")
    result = zoo.finetune(toy_dataset(TASK, 32, seed=0), eval=held_out, output_dir=str(output_dir), epochs=2,
                          batch_size=8, learning_rate=3e-3, warmup_steps=1, validation_inference_steps=2,
                          progress=False)
    return family, zoo, before, result, output_dir


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_renders_requested_sizes_reproducibly(family, base_paths):
    zoo = load(base_paths(family))
    assert type(zoo.pipeline).__name__ == PIPELINES[family] and zoo.family.name == family
    red, again = pixels([zoo.predict("a red square", **FAST), zoo.predict("a red square", **FAST)])
    assert red.shape == (32, 32, 3) and np.array_equal(red, again)
    other = pixels([zoo.predict("a red square", num_inference_steps=3, seed=1)])[0]
    assert not np.array_equal(other, red)
    images = zoo.predict(PROMPTS, height=48, width=16, **FAST)
    assert [set(output) for output in images] == [{"image"}] * 2 and images[0]["image"].size == (16, 48)
    with pytest.raises(ValueError, match="height must be a positive multiple of 8"):
        zoo.predict("a red square", height=36, **FAST)


def test_fine_tuning_lowers_eval_loss_in_each_familys_objective(tuned, held_out):
    family, zoo, before, result, _ = tuned
    evaluations = [r["eval_eval_loss"] for r in result.history if "eval_eval_loss" in r]
    assert len(evaluations) == 2 and evaluations[-1] < 0.9 * before["eval_loss"], (family, before, evaluations)
    first, second = zoo.evaluate(held_out, batch_size=4), zoo.evaluate(held_out, batch_size=3)
    assert first == zoo.evaluate(held_out, batch_size=4)  # seeded noise at fixed timesteps: the same every time
    assert second["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)  # and whatever the batching
    assert first["eval_loss"] == pytest.approx(result.final_metrics["eval_loss"], rel=1e-5)


def test_checkpoints_hold_the_denoiser_and_optimizer_only(tuned):
    family, zoo, _, _, output_dir = tuned
    checkpoint = sorted((output_dir / "checkpoints").glob("step-*"))[-1]
    with safe_open(checkpoint / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert keys == {f"denoiser.{key}" for key in zoo.family.module.state_dict()}  # no VAE, no text encoder
    assert not [p.name for p in checkpoint.iterdir() if p.name.startswith("model_")]  # one prepared model


def test_saved_pipeline_opens_in_taskzoo_and_plain_diffusers_to_the_same_images(tuned):
    from diffusers import DiffusionPipeline

    family, zoo, _, _, output_dir = tuned
    expected = pixels(zoo.predict(PROMPTS, **FAST))
    assert json.loads((output_dir / "last" / "model_index.json").read_text())["_class_name"] == PIPELINES[family]
    assert all(np.array_equal(a, b) for a, b in zip(pixels(load(output_dir / "last").predict(PROMPTS, **FAST)),
                                                    expected))
    pipeline = DiffusionPipeline.from_pretrained(output_dir / "last")
    assert all(np.array_equal(a, b) for a, b in zip(diffusers_images(pipeline, family), expected))


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_adapters_only_and_diffusers_loads_them(family, base_paths, held_out, tmp_path):
    from diffusers import DiffusionPipeline

    zoo = load(base_paths(family))
    base_weights = {name: value.clone() for name, value in zoo.family.module.state_dict().items()}
    base_images = pixels(zoo.predict(PROMPTS, **FAST))
    zoo.finetune(toy_dataset(TASK, 16, seed=0), strategy="lora", lora_rank=4, lora_alpha=8, max_steps=3,
                 batch_size=8, learning_rate=3e-2, progress=False, save_checkpoints=False, plot=False)
    weights = {name.replace(".base_layer", ""): value for name, value in zoo.family.module.state_dict().items()
               if "lora_" not in name}
    assert weights.keys() == base_weights.keys()
    assert all(torch.equal(weights[name], value) for name, value in base_weights.items())
    tuned = pixels(zoo.predict(PROMPTS, **FAST))
    assert any(not np.array_equal(a, b) for a, b in zip(tuned, base_images))

    folder = zoo.save(tmp_path / "lora")
    weights_file = "adapter_model.safetensors" if family == "pixart" else "pytorch_lora_weights.safetensors"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", weights_file]
    assert json.loads((folder / "adapter_config.json").read_text())["lora_alpha"] == 8
    again = load(folder)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(again.predict(PROMPTS, **FAST)), tuned))
    assert again.evaluate(held_out) == zoo.evaluate(held_out)

    pipeline = DiffusionPipeline.from_pretrained(base_paths(family))
    if family == "pixart":  # PixArt has no diffusers LoRA loader: peft's own opens the adapters
        from peft import PeftModel

        PeftModel.from_pretrained(pipeline.transformer, folder)  # adapts the transformer in place
    else:
        pipeline.load_lora_weights(folder)
    assert all(np.array_equal(a, b) for a, b in zip(diffusers_images(pipeline, family), tuned))


def test_other_pipelines_and_options_of_another_family_are_refused(base_paths):
    from types import SimpleNamespace

    from taskzoo.diffusion_families import family_of
    from taskzoo.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="SimpleNamespace is not a text-to-image pipeline taskzoo knows"):
        family_of(SimpleNamespace(unet=None, transformer=None))
    sd3, flux = load(base_paths("sd3")), load(base_paths("flux"))
    with pytest.raises(ValueError, match="snr_gamma weights DDPM losses; sd3 trains by flow matching"):
        sd3.finetune(toy_dataset(TASK, 8), snr_gamma=5.0, progress=False)
    with pytest.raises(ValueError, match="true_cfg_scale is Flux's"):
        sd3.predict("a red square", true_cfg_scale=2.0, **FAST)
    with pytest.raises(ValueError, match="pass true_cfg_scale > 1"):
        flux.predict("a red square", negative_prompt="blurry", **FAST)
    plain = pixels([flux.predict("a red square", **FAST)])[0]
    negative = pixels([flux.predict("a red square", negative_prompt="blurry", true_cfg_scale=2.0, **FAST)])[0]
    assert negative.shape == plain.shape and not np.array_equal(negative, plain)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_weights_gathered_from_shards_are_what_is_saved(strategy, base_paths, tmp_path):
    """Under FSDP or DeepSpeed the loop saves through Denoiser.save_pretrained with the weights gathered from
    the shards: those weights are saved, not the live module's. Here the untrained weights stand in for them."""
    zoo = load(base_paths("pixart"))  # the family without a diffusers LoRA loader
    base_images, untrained = pixels(zoo.predict(PROMPTS, **FAST)), copy_of(zoo.model.state_dict())
    zoo.finetune(toy_dataset(TASK, 8), strategy=strategy, max_steps=1, batch_size=8, learning_rate=3e-2,
                 progress=False, save_checkpoints=False, plot=False)
    tuned = pixels(zoo.predict(PROMPTS, **FAST))
    assert any(not np.array_equal(a, b) for a, b in zip(tuned, base_images))
    adapters = copy_of(zoo.model.state_dict())  # with lora_B = 0 they change nothing
    gathered = untrained if strategy == "full" else {key: torch.zeros_like(value) if "lora_B" in key else value
                                                     for key, value in adapters.items()}
    zoo.model.save_pretrained(tmp_path / "gathered", state_dict=gathered)
    saved = sorted(p.name for p in (tmp_path / "gathered").iterdir())
    assert ("transformer" in saved) == (strategy == "full") and "tokenizer_config.json" not in saved
    assert all(np.array_equal(a, b) for a, b in zip(pixels(load(tmp_path / "gathered").predict(PROMPTS, **FAST)),
                                                    base_images))
    assert all(np.array_equal(a, b) for a, b in zip(pixels(zoo.predict(PROMPTS, **FAST)), tuned))  # live: as it was


def copy_of(state_dict):
    return {key: value.clone() for key, value in state_dict.items()}

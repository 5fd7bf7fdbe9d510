import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

import taskzoo
from taskzoo.errors import DataError
from taskzoo.testing import toy_dataset

TASK = "text-to-image"
FAST = dict(num_inference_steps=3, seed=0, batch_size=1)  # few steps: the tests check behaviour, not beauty


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def held_out():
    return toy_dataset(TASK, 8, seed=1)


@pytest.fixture
def zoo(tiny_model_path):
    return taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu")


@pytest.fixture(scope="module")
def tuned(tiny_model_path, held_out, tmp_path_factory):
    """The tiny pipeline fully fine-tuned once, shared by the tests that need one."""
    zoo = taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu")
    before = zoo.evaluate(held_out)
    output_dir = tmp_path_factory.mktemp("t2i_run")
    result = zoo.finetune(toy_dataset(TASK, 32, seed=0), eval=held_out, output_dir=str(output_dir), epochs=3,
                          batch_size=8, learning_rate=3e-3, warmup_steps=2, validation_inference_steps=2,
                          progress=False)
    return zoo, before, result, output_dir


def pixels(outputs):
    return [np.asarray(output["image"]) for output in outputs]


def test_finetuning_lowers_held_out_eval_loss(tuned, held_out):
    zoo, before, result, _ = tuned
    after = zoo.evaluate(held_out, batch_size=8)
    assert set(after) == {"eval_loss"}
    assert before["eval_loss"] > 1.0 and after["eval_loss"] < 0.4 * before["eval_loss"]
    evaluations = [r["eval_eval_loss"] for r in result.history if "eval_eval_loss" in r]
    assert len(evaluations) == 3 and result.best_metric == min(evaluations)  # lower is better
    assert after["eval_loss"] == pytest.approx(result.final_metrics["eval_loss"], rel=1e-6)


def test_eval_loss_is_identical_on_two_runs_and_does_not_depend_on_batching(zoo, held_out):
    first, second = zoo.evaluate(held_out, batch_size=4), zoo.evaluate(held_out, batch_size=4)
    assert first == second
    assert zoo.evaluate(held_out, batch_size=3)["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)


def test_validation_grids_and_the_saved_pipeline_open_everywhere(tuned):
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline
    from PIL import Image

    zoo, _, result, output_dir = tuned
    steps = [r["step"] for r in result.history if "eval_eval_loss" in r]
    grids = sorted(output_dir.glob("validation-step-*.png"))
    assert [int(g.stem.rsplit("-", 1)[1]) for g in grids] == steps
    with Image.open(grids[-1]) as grid:  # 4 prompts from the training captions, in one row of 128 px cells
        assert grid.size == (4 * 130 + 2, 128 + 14 + 4)
    assert (output_dir / "last" / "model_index.json").exists()
    checkpoint = sorted((output_dir / "checkpoints").glob("step-*"))[-1]  # the UNet and its optimizer state only
    with safe_open(checkpoint / "model.safetensors", "pt") as weights:
        assert set(weights.keys()) == {f"denoiser.{key}" for key in zoo.pipeline.unet.state_dict()}
    expected = pixels(zoo.predict(["a red square", "a blue circle"], **FAST))
    reloaded = taskzoo.load(TASK, model=output_dir / "last", device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(pixels(reloaded.predict(["a red square", "a blue circle"],
                                                                            **FAST)), expected))
    for loader in (StableDiffusionPipeline, AutoPipelineForText2Image):
        pipeline = loader.from_pretrained(output_dir / "last")
        image = pipeline("a red square", num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images[0]
        assert np.array_equal(np.asarray(image), expected[0])


def test_same_seed_same_pixels_and_batching_does_not_matter(zoo):
    red, again = pixels([zoo.predict("a red square", **FAST), zoo.predict("a red square", **FAST)])
    assert red.shape == (32, 32, 3) and np.array_equal(red, again)
    other = pixels([zoo.predict("a red square", num_inference_steps=3, seed=1)])[0]
    assert np.abs(other.astype(int) - red).max() > 50
    batch = pixels(zoo.predict(["a blue circle", "a red square"], **{**FAST, "batch_size": 2}))
    # The same image alone or beside another prompt, up to float rounding (batched kernels may round apart).
    assert np.abs(batch[1].astype(int) - red).max() <= 2
    negative = pixels([zoo.predict("a red square", negative_prompt="blurry", **FAST)])[0]
    assert not np.array_equal(negative, red)


@pytest.mark.parametrize("width, height, top, left", [(64, 32, 0, 16), (40, 80, 16, 0), (32, 32, 0, 0)])
def test_training_images_are_resized_centre_cropped_and_normalised(width, height, top, left):
    """Three bands, red | green | blue, across the longer side; the middle one is wide enough that the centre
    crop holds green alone (the bilinear blend at its edges falls outside the crop), in [-1, 1]."""
    from PIL import Image

    from taskzoo.diffusion import training_pixels

    image = np.zeros((height, width, 3), dtype=np.uint8)
    length = max(width, height)
    bands = [(0, length // 8, 0), (length // 8, length - length // 8, 1), (length - length // 8, length, 2)]
    for start, stop, channel in bands:
        if width >= height:
            image[:, start:stop, channel] = 255
        else:
            image[start:stop, :, channel] = 255
    pixels, size_ids = training_pixels(Image.fromarray(image), 32)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    assert size_ids == [height, width, top, left, 32, 32]
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 32, 32)
    if width == height:  # nothing cropped: the red and blue bands stay at the edges
        assert pixels[0, :, 0].min() > 0.9 and pixels[2, :, -1].min() > 0.9
        assert torch.allclose(pixels[:, :, 8:24], green[:, :, 8:24], atol=1e-6)
    else:
        assert torch.allclose(pixels, green, atol=1e-6)


def test_requested_sizes_are_honoured_and_impossible_ones_refused(zoo, tiny_model_path):
    assert zoo.predict("a red square", height=48, width=16, **FAST)["image"].size == (16, 48)
    assert zoo.predict("a red square", **FAST)["image"].size == (32, 32)  # the model's native size
    for bad in ({"height": 30}, {"width": 0}, {"height": 32.0}):
        with pytest.raises(ValueError, match="must be a positive multiple of 8"):
            zoo.predict("a red square", **bad, **FAST)
    with pytest.raises(ValueError, match="resolution must be a positive multiple of 8"):
        taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu", resolution=20)


def test_lora_trains_only_adapters_and_reloads_to_the_same_images(tiny_model_path, held_out, tmp_path):
    from diffusers import StableDiffusionPipeline

    base_path = tiny_model_path(TASK)
    zoo = taskzoo.load(TASK, model=base_path, device="cpu")
    base_weights = {name: value.clone() for name, value in zoo.pipeline.unet.state_dict().items()}
    base_images = pixels(zoo.predict(["a red square", "a green triangle"], **FAST))
    zoo.finetune(toy_dataset(TASK, 32, seed=0), strategy="lora", lora_rank=4, lora_alpha=8, epochs=1,
                 batch_size=8, learning_rate=1e-2, progress=False, save_checkpoints=False, plot=False)
    weights = {name.replace(".base_layer", ""): value for name, value in zoo.pipeline.unet.state_dict().items()
               if "lora_" not in name}  # peft wraps each adapted layer: to_q.weight -> to_q.base_layer.weight
    assert weights.keys() == base_weights.keys()
    assert all(torch.equal(weights[name], value) for name, value in base_weights.items())
    tuned = pixels(zoo.predict(["a red square", "a green triangle"], **FAST))
    assert any(not np.array_equal(a, b) for a, b in zip(tuned, base_images))

    folder = zoo.save(tmp_path / "lora")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "pytorch_lora_weights.safetensors"]
    record = json.loads((folder / "adapter_config.json").read_text())
    assert record["base_model_name_or_path"] == str(base_path.resolve()) and record["lora_alpha"] == 8
    again = taskzoo.load(TASK, model=folder, device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(pixels(again.predict(["a red square", "a green triangle"],
                                                                          **FAST)), tuned))
    pipeline = StableDiffusionPipeline.from_pretrained(base_path)  # diffusers' own loader, alpha kept
    pipeline.load_lora_weights(folder)
    image = pipeline("a red square", num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(image), tuned[0])
    assert again.evaluate(held_out) == zoo.evaluate(held_out)

    zoo.training_options["save_merged"] = True  # as finetune(save_merged=True) sets it: a whole pipeline
    merged = taskzoo.load(TASK, model=zoo.save(tmp_path / "merged"), device="cpu")
    again.apply_strategy("full")  # what fine-tuning a loaded LoRA in full does first: fuse the adapters
    for model in (merged, again):  # fused weights round differently from adapters: equal up to rounding
        assert not model._has_lora()
        images = pixels(model.predict(["a red square", "a green triangle"], **FAST))
        assert max(np.abs(a.astype(int) - b).max() for a, b in zip(images, tuned)) <= 2


def test_ema_snr_gamma_and_cached_latents_with_v_prediction(tiny_model_path, held_out, tmp_path):
    folder = tmp_path / "v-model"
    shutil.copytree(tiny_model_path(TASK), folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "v_prediction"}))
    zoo = taskzoo.load(TASK, model=folder, device="cpu")
    assert zoo.family.objective(zoo.training_options).kind == "v_prediction"
    before = zoo.evaluate(held_out, batch_size=8)["eval_loss"]
    result = zoo.finetune(toy_dataset(TASK, 32, seed=0), eval=held_out, ema=True, ema_decay=0.9, snr_gamma=5.0,
                          cache_latents=True, epochs=3, batch_size=8, learning_rate=2e-3, progress=False,
                          save_checkpoints=False, plot=False, validation_prompts=[])
    after = zoo.evaluate(held_out, batch_size=8)["eval_loss"]
    assert after < 0.7 * before
    # Evaluation during training used the EMA weights; afterwards they are the model's weights.
    assert after == pytest.approx(result.final_metrics["eval_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="ema=True cannot be combined"):
        zoo.finetune(toy_dataset(TASK, 8), ema=True, early_stopping_patience=2, progress=False)


def test_image_folder_with_metadata_jsonl(zoo, held_out, tmp_path):
    lines = []
    for i, row in enumerate(held_out):
        row["image"].save(tmp_path / f"{i:03d}.png")
        lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": row["text"]}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    assert zoo.evaluate(tmp_path) == zoo.evaluate(held_out)  # PNG is lossless: the same data, the same loss

    splits = tmp_path / "splits"
    for split in ("train", "validation"):
        shutil.copytree(tmp_path, splits / split, ignore=shutil.ignore_patterns("splits"))
    assert len(zoo.load_data(splits, "eval")) == len(held_out)
    (tmp_path / "003.png").unlink()
    with pytest.raises(DataError, match="1 missing file.*003.png"):
        zoo.evaluate(tmp_path)


def test_bad_data_and_prompts_are_refused(zoo, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metadata.jsonl"):
        zoo.evaluate(tmp_path / "empty")
    image = toy_dataset(TASK, 1)[0]["image"]
    with pytest.raises(DataError, match="no column 'text'"):
        zoo.evaluate([{"image": image, "caption": "a red square"}])
    with pytest.raises(DataError, match="captions.*row 1"):
        zoo.evaluate({"image": [image, image], "text": ["a red square", None]})
    with pytest.raises(ValueError, match="at least one prompt"):
        zoo.predict([])
    with pytest.raises(ValueError, match="prompts as strings"):
        zoo.predict([42])
    with pytest.raises(ValueError, match="negative_prompt is one string"):
        zoo.predict("a red square", negative_prompt=["blurry"])


def test_clip_score_when_a_clip_model_is_given(tiny_model_path, held_out, tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_path(TASK) / "tokenizer")
    sizes = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77,
                                          eos_token_id=tokenizer.eos_token_id, **sizes),
                         vision_config=dict(image_size=32, patch_size=8, **sizes), projection_dim=16)
              ).save_pretrained(tmp_path)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(tmp_path)

    zoo = taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu", clip_model=tmp_path, clip_inference_steps=2)
    first, second = zoo.evaluate(held_out), zoo.evaluate(held_out)
    assert set(first) == {"eval_loss", "clip_score"} and first == second
    assert 0.0 <= first["clip_score"] <= 100.0


@pytest.mark.slow  # ~30 s: bf16 convolutions are emulated on CPUs without bf16 units
def test_mixed_precision_casts_the_frozen_parts_only_while_training(tiny_model_path, held_out, tmp_path):
    import filecmp

    base = tiny_model_path(TASK)
    zoo = taskzoo.load(TASK, model=base, device="cpu")
    seen, step = {}, zoo.training_step

    def watched_step(model, batch):  # what the loop sees while it trains
        seen.setdefault("frozen", {name: part.dtype for name, part in zoo.family.frozen().items()})
        seen.setdefault("denoiser", next(model.parameters()).dtype)
        return step(model, batch)

    zoo.training_step = watched_step
    output_dir = tmp_path / "run"
    zoo.finetune(toy_dataset(TASK, 4), eval=held_out.select(range(2)), mixed_precision="bf16", max_steps=2,
                 eval_every=1, batch_size=2, learning_rate=1e-3, output_dir=str(output_dir),
                 validation_prompts=["a red square"], validation_inference_steps=1, progress=False)
    # As diffusers' scripts: the VAE and text encoder in bf16, the trained weights in float32.
    assert seen == {"frozen": {"vae": torch.bfloat16, "text_encoder": torch.bfloat16}, "denoiser": torch.float32}
    assert (output_dir / "validation-step-000002.png").exists()  # rendered under autocast while cast
    # Afterwards the frozen parts are the base's float32 weights again, in memory and in every saved folder.
    assert {part.dtype for part in zoo.family.frozen().values()} == {torch.float32}
    for folder in ("best", "last"):
        for part in ("vae", "text_encoder"):
            saved = sorted((output_dir / folder / part).glob("*.safetensors"))
            assert saved and all(filecmp.cmp(file, base / part / file.name, shallow=False) for file in saved)
    reloaded = taskzoo.load(TASK, model=output_dir / "last", device="cpu")
    assert np.array_equal(*pixels([zoo.predict("a red square", **FAST), reloaded.predict("a red square", **FAST)]))
    # A training checkpoint holds the UNet (and the optimizer's state for it), not the VAE or text encoder.
    checkpoint = sorted((output_dir / "checkpoints").glob("step-*"))[-1]
    with safe_open(checkpoint / "model.safetensors", "pt") as weights:
        assert {key.split(".")[0] for key in weights.keys()} == {"denoiser"}  # noqa: SIM118 - safe_open is no dict
        assert len(list(weights.keys())) == len(zoo.pipeline.unet.state_dict())

"""image-segmentation with universal-segmentation models (Mask2Former, MaskFormer, OneFormer): mask and class
targets built from the semantic masks, the processor's post-processing, strategies, new label sets."""

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image as ImageFeature
from PIL import Image

import taskzoo
from taskzoo import metrics, strategies
from taskzoo.tasks import universal_segmentation as universal
from taskzoo.tasks.image_segmentation import ImageSegmentation
from taskzoo.testing import toy_dataset

TASK = "image-segmentation"


@pytest.fixture(scope="module")
def family_path(tmp_path_factory):
    """family_path(family) -> folder of that family's tiny model, built once per module."""
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = ImageSegmentation.tiny_model(tmp_path_factory.mktemp(family), family=family)
        return built[family]

    return get


@pytest.fixture(scope="module")
def trained(family_path):
    """The tiny Mask2Former fine-tuned once on the toy shapes, shared by the tests below."""
    zoo = taskzoo.load(TASK, model=family_path("mask2former"), device="cpu")
    held_out = toy_dataset(TASK, 48, seed=1)
    before = zoo.evaluate(held_out)
    # 72 steps: mean_iou 0.53 to 0.79 over training seeds 0, 1, 2 and 42 (the default), from 0.02.
    result = zoo.finetune(toy_dataset(TASK, 192, seed=0), epochs=6, learning_rate=5e-3, warmup_ratio=0.1,
                          batch_size=16, progress=False, save_checkpoints=False, plot=False)
    return zoo, before, result, held_out


def mixed_sizes(data):
    """The rows stretched to three sizes (masks with nearest resampling): batches the processor pads."""
    sizes = [(64, 64), (96, 64), (64, 112)]
    images = [image.resize(sizes[i % 3], Image.BILINEAR) for i, image in enumerate(data["image"])]
    masks = [mask.resize(sizes[i % 3], Image.NEAREST) for i, mask in enumerate(data["mask"])]
    return Dataset.from_dict({"image": images, "mask": masks},
                             features=Features({"image": ImageFeature(), "mask": ImageFeature()}))


def test_a_mask2former_loads_through_the_universal_auto_class_and_learns_the_toy_shapes(trained):
    zoo, before, result, held_out = trained
    assert type(zoo.model).__name__ == "Mask2FormerForUniversalSegmentation" and zoo.is_universal
    after = zoo.evaluate(held_out)
    assert after["mean_iou"] >= 0.45 and after["mean_iou"] >= 3 * before["mean_iou"]
    assert {"mean_iou", "mean_accuracy", "overall_accuracy", "iou_background", "iou_square"} <= set(after)
    assert all(0 <= value <= 1 for value in after.values())
    assert result.metric == "mean_iou"


def test_predict_gives_one_mask_per_class_present_from_the_processors_post_processing(trained):
    zoo, _, _, held_out = trained
    image = held_out[0]["image"].convert("RGBA").resize((97, 53))  # any size and mode
    segments = zoo.predict(image)
    assert segments and all(set(s) == {"label", "score", "mask"} for s in segments)
    assert all(s["mask"].mode == "L" and s["mask"].size == (97, 53) for s in segments)
    masks = np.stack([np.asarray(s["mask"]) for s in segments])
    assert set(np.unique(masks)) <= {0, 255} and ((masks == 255).sum(0) == 1).all()  # a partition of the image
    # The score is the mean over its mask of each pixel's probability of its class: at least 1 / classes.
    assert all(1 / len(zoo.labels) <= s["score"] <= 1 for s in segments)
    label_map = zoo.predict(image, return_label_map=True)
    for segment in segments:
        assert ((label_map == zoo.labels.index(segment["label"])) == (np.asarray(segment["mask"]) == 255)).all()
    # The label map is transformers' own: the model and the processor's post_process_semantic_segmentation.
    inputs = zoo.processor(images=image.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        outputs = zoo.model(pixel_values=inputs["pixel_values"])
    expected = zoo.processor.post_process_semantic_segmentation(outputs, target_sizes=[(53, 97)])[0]
    assert (label_map == expected.numpy()).all()


def test_a_batch_of_mixed_sizes_predicts_as_one_image_at_a_time(trained):
    zoo, _, _, held_out = trained
    images = [*mixed_sizes(held_out.select(range(5)))["image"], np.zeros((5, 300, 3), np.uint8)]
    batched = zoo.predict(images, batch_size=6)
    alone = [zoo.predict(image) for image in images]
    for many, one in zip(batched, alone):
        assert [s["label"] for s in many] == [s["label"] for s in one]
        assert [s["score"] for s in many] == pytest.approx([s["score"] for s in one], abs=1e-5)
        assert all((np.asarray(a["mask"]) == np.asarray(b["mask"])).all() for a, b in zip(many, one))
    assert batched[-1][0]["mask"].size == (300, 5)


def test_evaluate_scores_the_label_maps_that_predict_gives(trained):
    zoo, _, _, held_out = trained
    data = mixed_sizes(held_out.select(range(9)))  # padded batches: each image is scored on its own pixels
    label_maps = zoo.predict(list(data["image"]), return_label_map=True)
    confusion = sum(metrics.confusion_matrix(label_map, np.asarray(mask), len(zoo.labels))
                    for label_map, mask in zip(label_maps, data["mask"]))
    expected = metrics.segmentation_scores(confusion)
    scores = zoo.evaluate(data, batch_size=4)
    assert scores["mean_iou"] == pytest.approx(expected["mean_iou"])
    assert scores["overall_accuracy"] == pytest.approx(expected["overall_accuracy"])


def test_targets_are_built_as_the_image_processor_builds_them(family_path):
    zoo = taskzoo.load(TASK, model=family_path("mask2former"), device="cpu")
    data = toy_dataset(TASK, 3, seed=4)
    images, masks = list(data["image"]), [np.asarray(mask).astype(np.int64) for mask in data["mask"]]
    masks[1][:, :10] = 255  # ignored pixels are in no mask
    pixels, sizes = universal.encode(zoo.processor, images)
    mask_labels, class_labels = universal.targets(masks, sizes, tuple(pixels.shape[-2:]), 255)
    expected = zoo.processor(images=images, segmentation_maps=masks, ignore_index=255, return_tensors="pt")
    for ours, theirs in zip(mask_labels, expected["mask_labels"]):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(class_labels, expected["class_labels"]):
        assert torch.equal(ours, theirs)
    assert mask_labels[1][:, :, :10].sum() == 0 and set(class_labels[0].tolist()) == set(np.unique(masks[0]))


def test_a_new_label_set_gets_a_new_class_predictor_with_its_no_object_class(family_path, tmp_path):
    from transformers import AutoModelForUniversalSegmentation

    zoo = taskzoo.load(TASK, model=family_path("mask2former"), device="cpu")
    backbone = {k: v.clone() for k, v in zoo.model.model.pixel_level_module.encoder.named_parameters()}
    decoder = {k: v.clone() for k, v in zoo.model.model.transformer_module.named_parameters()}
    names = ["ground", "square", "circle", "triangle", "star"]
    data = toy_dataset(TASK, 16)
    masks = [np.where(np.asarray(m) == 3, 4, np.asarray(m)) for m in data["mask"]]
    zoo.finetune(Dataset.from_dict({"image": data["image"], "mask": masks}), labels=names, max_steps=2,
                 strategy="freeze", batch_size=8, progress=False, save_checkpoints=False, plot=False)
    assert zoo.labels == names and zoo.model.class_predictor.out_features == len(names) + 1
    assert zoo.model.criterion.empty_weight.tolist() == pytest.approx([1.0] * 5 + [0.1])  # "no object" is last
    assert all(torch.equal(v, backbone[k]) for k, v in zoo.model.model.pixel_level_module.encoder.named_parameters())
    assert any(not torch.equal(v, decoder[k]) for k, v in zoo.model.model.transformer_module.named_parameters())
    zoo.save(tmp_path / "five")
    assert AutoModelForUniversalSegmentation.from_pretrained(tmp_path / "five").config.id2label[4] == "star"


@pytest.mark.parametrize("family", ["mask2former", "oneformer"])
def test_freeze_trains_all_but_the_backbone_and_lora_adapts_the_backbone(family_path, family, tmp_path):
    from transformers import AutoModelForUniversalSegmentation

    data = toy_dataset(TASK, 16)
    zoo = taskzoo.load(TASK, model=family_path(family), device="cpu")
    assert "model.pixel_level_module.decoder" in zoo.head_modules() and "model.transformer_module" in zoo.head_modules()
    start = {name: p.clone() for name, p in zoo.model.named_parameters()}
    zoo.finetune(data, max_steps=2, strategy="freeze", batch_size=8, learning_rate=1e-2, progress=False,
                 save_checkpoints=False, plot=False)
    changed = {name for name, p in zoo.model.named_parameters() if not torch.equal(p, start[name])}
    assert changed and not any(name.startswith(universal.BODY) for name in changed)
    assert all(p.requires_grad == (not name.startswith(universal.BODY)) for name, p in zoo.model.named_parameters())

    zoo = taskzoo.load(TASK, model=family_path(family), device="cpu")
    zoo.finetune(data, max_steps=2, strategy="lora", batch_size=8, learning_rate=1e-2, progress=False,
                 save_checkpoints=False, plot=False)
    assert strategies.is_peft(zoo.model)
    merged = dict(strategies.exportable(zoo.model).named_parameters())
    assert any(not torch.equal(merged[name], start[name]) for name in start if name.startswith(universal.BODY))
    image = data[0]["image"]
    zoo.save(tmp_path / "lora")  # merged: a plain model that transformers opens
    plain = AutoModelForUniversalSegmentation.from_pretrained(tmp_path / "lora")
    assert not strategies.is_peft(plain)
    again = taskzoo.load(TASK, model=tmp_path / "lora", device="cpu")
    assert (again.predict(image, return_label_map=True) == zoo.predict(image, return_label_map=True)).all()


def test_lora_on_a_convolutional_backbone_is_refused_in_one_line(family_path):
    zoo = taskzoo.load(TASK, model=family_path("maskformer"), device="cpu")  # a ResNet backbone: no linear layer
    with pytest.raises(ValueError, match=r"strategy='lora': LoRA adapts linear layers.*none.*'full' or 'freeze'"):
        zoo.finetune(toy_dataset(TASK, 8), max_steps=1, strategy="lora", progress=False, save_checkpoints=False)


def test_save_and_reload_round_trip_opens_in_transformers_and_its_pipeline(trained, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, pipeline

    zoo, _, _, held_out = trained
    zoo.save(tmp_path / "saved")
    image = held_out[2]["image"]
    again = taskzoo.load(TASK, model=tmp_path / "saved", device="cpu")
    assert (again.predict(image, return_label_map=True) == zoo.predict(image, return_label_map=True)).all()
    assert AutoModelForUniversalSegmentation.from_pretrained(tmp_path / "saved").config.id2label == \
        zoo.model.config.id2label
    segmenter = pipeline("image-segmentation", model=str(tmp_path / "saved"), device="cpu",
                         image_processor=AutoImageProcessor.from_pretrained(tmp_path / "saved", backend="pil"))
    assert sorted(s["label"] for s in segmenter(image, subtask="semantic")) == \
        sorted(s["label"] for s in zoo.predict(image))


@pytest.mark.parametrize("family", ["maskformer", "oneformer"])
def test_maskformer_and_oneformer_predict_evaluate_train_and_round_trip(family_path, family, tmp_path):
    zoo = taskzoo.load(TASK, model=family_path(family), device="cpu")
    data = toy_dataset(TASK, 16, seed=2)
    segments = zoo.predict(data[0]["image"].resize((80, 48)))
    assert segments and all(s["mask"].size == (80, 48) and set(s) == {"label", "score", "mask"} for s in segments)
    result = zoo.finetune(data, max_steps=6, learning_rate=3e-3, batch_size=8, progress=False,
                          save_checkpoints=False, plot=False, log_every=1)
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert 0 <= zoo.evaluate(data.select(range(8)))["mean_iou"] <= 1
    zoo.save(tmp_path / family)  # OneFormer's tokenizer (its task token) goes with it
    again = taskzoo.load(TASK, model=tmp_path / family, device="cpu")
    image = data[1]["image"]
    assert (again.predict(image, return_label_map=True) == zoo.predict(image, return_label_map=True)).all()


@pytest.mark.slow
@pytest.mark.parametrize("family, epochs, floor", [("maskformer", 16, 0.35), ("oneformer", 8, 0.3)])
def test_maskformer_and_oneformer_learn_the_toy_shapes(family_path, family, epochs, floor):
    # They learn slower than Mask2Former (MaskFormer has no masked attention): over training seeds 0, 1, 2 and
    # 42 (the default) MaskFormer ends at mean_iou 0.47, 0.51, 0.23, 0.51 and OneFormer at 0.35, 0.27, 0.40, 0.38.
    zoo = taskzoo.load(TASK, model=family_path(family), device="cpu")
    held_out = toy_dataset(TASK, 48, seed=1)
    before = zoo.evaluate(held_out)["mean_iou"]
    zoo.finetune(toy_dataset(TASK, 192, seed=0), epochs=epochs, learning_rate=3e-3, batch_size=16, progress=False,
                 save_checkpoints=False, plot=False)
    after = zoo.evaluate(held_out)["mean_iou"]
    assert after >= floor and after >= 1.5 * before


def test_other_model_types_are_refused_naming_the_type_and_the_supported_ones(tmp_path):
    from transformers import BertConfig, DetrConfig, OneFormerConfig

    for name, config in (("detr", DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False)),
                         ("bert", BertConfig()), ("oneformer", OneFormerConfig(is_training=True))):
        config.save_pretrained(tmp_path / name)
    with pytest.raises(ValueError, match=r"is a universal-segmentation detr model; the model types supported are "
                                         r".*mask2former.*segformer"):
        universal.load_model(tmp_path / "detr")
    with pytest.raises(ValueError, match=r"it is a bert model"):
        universal.load_model(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"is_training=true in config.json.*Set it to false"):
        universal.load_model(tmp_path / "oneformer")

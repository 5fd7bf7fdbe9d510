import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import taskzoo
from taskzoo import metrics
from taskzoo.errors import DataError
from taskzoo.testing import toy_dataset

TASK = "image-segmentation"


@pytest.fixture(scope="module")
def trained(tiny_model_path):
    """The tiny SegFormer fine-tuned once on the toy shapes, shared by the tests below."""
    zoo = taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu")
    held_out = toy_dataset(TASK, 48, seed=1)
    before = zoo.evaluate(held_out)
    result = zoo.finetune(toy_dataset(TASK, 192, seed=0), eval=held_out, epochs=8, learning_rate=5e-3,
                          batch_size=16, progress=False, save_checkpoints=False, plot=False)
    return zoo, before, result, held_out


def with_masks(data, transform):
    """The dataset with each mask replaced by transform(mask as an int array)."""
    return Dataset.from_dict({"image": data["image"],
                              "mask": [transform(np.asarray(mask).astype(np.int64)) for mask in data["mask"]]})


def test_finetuning_at_least_doubles_mean_iou_and_reaches_0_6(trained):
    zoo, before, result, held_out = trained
    after = zoo.evaluate(held_out)
    assert after["mean_iou"] >= 0.6 and after["mean_iou"] >= 2 * before["mean_iou"]
    assert {"mean_iou", "mean_accuracy", "overall_accuracy", "iou_background", "iou_square"} <= set(after)
    assert all(0 <= value <= 1 for value in after.values())
    assert result.metric == "mean_iou"


def test_predict_gives_one_mask_per_class_present_at_the_input_size(trained):
    zoo, _, _, held_out = trained
    image = held_out[0]["image"].convert("RGBA").resize((97, 53))  # any size and mode
    segments = zoo.predict(image)
    assert segments and all(set(s) == {"label", "score", "mask"} for s in segments)
    assert [s["label"] for s in segments] == [label for label in zoo.labels if label in {s["label"] for s in segments}]
    masks = np.stack([np.asarray(s["mask"]) for s in segments])
    assert all(s["mask"].mode == "L" and s["mask"].size == (97, 53) for s in segments)
    assert set(np.unique(masks)) <= {0, 255} and ((masks == 255).sum(0) == 1).all()  # a partition of the image
    assert all(0 < s["score"] <= 1 for s in segments)
    label_map = zoo.predict(image, return_label_map=True)
    assert label_map.shape == (53, 97)
    for segment in segments:
        assert ((label_map == zoo.labels.index(segment["label"])) == (np.asarray(segment["mask"]) == 255)).all()
    batched = zoo.predict([held_out[1]["image"], image, np.zeros((5, 300), np.uint8)], batch_size=2)
    assert [s["label"] for s in batched[1]] == [s["label"] for s in segments]
    assert batched[2][0]["mask"].size == (300, 5)


def test_the_prediction_finds_the_shape(trained):
    zoo, _, _, held_out = trained
    row = held_out[0]  # one square on the background
    label_map = zoo.predict(row["image"], return_label_map=True)
    truth = np.asarray(row["mask"])
    assert (label_map == truth).mean() >= 0.8


def test_a_mask_value_beyond_the_labels_is_refused_naming_value_column_and_row(trained):
    zoo, _, _, held_out = trained
    masks = [np.asarray(mask).copy() for mask in held_out.select(range(4))["mask"]]
    masks[2][10, 5] = 7
    bad = Dataset.from_dict({"image": held_out.select(range(4))["image"], "mask": masks})
    with pytest.raises(DataError, match=r"Column 'mask', row 2: value 7 is not a class.*4 labels.*labels=\["):
        zoo.evaluate(bad)
    with pytest.raises(DataError, match=r"Row 0: the image is 64x64 but its mask .* is 32x32"):
        zoo.evaluate([{"image": held_out[0]["image"], "mask": np.zeros((32, 32), np.uint8)}])
    with pytest.raises(DataError, match="colour image"):
        zoo.evaluate([{"image": held_out[0]["image"], "mask": held_out[0]["image"]}])


def test_ignore_index_and_reduce_labels(trained, tiny_model_path):
    zoo, _, _, held_out = trained
    data = held_out.select(range(16))
    ignored = with_masks(data, lambda m: np.where(np.arange(64)[None, :] < 20, 255, m))  # a band of 255
    # reduce_labels: ids shifted up by one with 0 meaning "other" is the same data once reduced.
    shifted = with_masks(data, lambda m: np.where(np.arange(64)[None, :] < 20, 0, m + 1))
    expected = zoo.evaluate(ignored)
    assert expected != pytest.approx(zoo.evaluate(data))  # the band is left out of the scores
    zoo.reduce_labels = True
    try:
        assert zoo.evaluate(shifted) == pytest.approx(expected)
    finally:
        zoo.reduce_labels = False
    reducing = taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu", reduce_labels=True)
    assert reducing.reduce_labels
    with pytest.raises(DataError, match=r"value 4 is not a class"):  # unreduced, 4 is beyond the 4 labels
        zoo.evaluate(with_masks(data, lambda m: m + 1))


def test_masks_in_an_annotation_or_label_column_and_as_palette_images(trained):
    zoo, _, _, held_out = trained
    data = held_out.select(range(8))
    expected = zoo.evaluate(data)
    palette = [mask.convert("P") for mask in data["mask"]]
    assert zoo.evaluate(Dataset.from_dict({"image": data["image"], "annotation": palette})) == expected
    assert zoo.evaluate(Dataset.from_dict({"image": data["image"], "label": data["mask"]})) == expected
    assert zoo.evaluate(Dataset.from_dict({"picture": data["image"], "seg": data["mask"]}),
                        columns={"picture": "image", "seg": "mask"}) == expected


def test_folder_of_images_and_masks_matched_by_stem(trained, tmp_path):
    zoo, _, _, held_out = trained
    for split, rows in (("train", toy_dataset(TASK, 8, 3)), ("validation", held_out.select(range(8)))):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir()
        for i, row in enumerate(rows):
            row["image"].save(tmp_path / split / "images" / f"{i:03}.jpg", quality=95)
            row["mask"].save(tmp_path / split / "masks" / f"{i:03}.png")
    scores = zoo.evaluate(str(tmp_path))  # the validation split
    assert scores["mean_iou"] == pytest.approx(zoo.evaluate(held_out.select(range(8)))["mean_iou"], abs=0.05)
    (tmp_path / "validation" / "images" / "orphan.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"1 image\(s\) in .*validation have no mask .*: orphan\.png"):
        zoo.evaluate(str(tmp_path))
    (tmp_path / "validation" / "images" / "orphan.png").unlink()
    (tmp_path / "validation" / "masks" / "003.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"003\.png is corrupted"):
        zoo.evaluate(str(tmp_path))


def test_a_new_label_set_gets_a_new_head_and_freeze_trains_only_it(trained, tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    trained[0].save(tmp_path / "pretrained")
    zoo = taskzoo.load(TASK, model=tmp_path / "pretrained", device="cpu")
    encoder = {k: v.clone() for k, v in zoo.model.segformer.state_dict().items()}
    names = ["ground", "square", "circle", "triangle", "star"]
    zoo.finetune(with_masks(toy_dataset(TASK, 16), lambda m: np.where(m == 3, 4, m)), labels=names, max_steps=2,
                 strategy="freeze", batch_size=8, progress=False, save_checkpoints=False, plot=False)
    assert zoo.labels == names and zoo.model.decode_head.classifier.out_channels == 5
    assert all(torch.equal(v, encoder[k]) for k, v in zoo.model.segformer.state_dict().items())
    zoo.save(tmp_path / "five")
    assert AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "five").config.id2label[4] == "star"


def test_save_load_round_trip_and_the_plain_transformers_pipeline(trained, tmp_path):
    from transformers import AutoImageProcessor, pipeline

    zoo, _, _, held_out = trained
    zoo.save(tmp_path / "saved")
    image = held_out[2]["image"]
    again = taskzoo.load(TASK, model=tmp_path / "saved", device="cpu")
    assert (again.predict(image, return_label_map=True) == zoo.predict(image, return_label_map=True)).all()
    segmenter = pipeline("image-segmentation", model=str(tmp_path / "saved"), device="cpu",
                         image_processor=AutoImageProcessor.from_pretrained(tmp_path / "saved", backend="pil"))
    assert [s["label"] for s in segmenter(image)] == [s["label"] for s in zoo.predict(image)]


# ------------------------------------------------------------------------------------ metrics


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, (6, 7), elements=st.sampled_from([0, 1, 2, 3, 255])),
       arrays(np.uint8, (6, 7), elements=st.integers(0, 3)))
def test_mean_iou_is_in_0_1_and_1_for_a_perfect_mask(reference, prediction):
    scores = metrics.segmentation_scores(metrics.confusion_matrix(prediction, reference, 4))
    for name in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert 0 <= scores[name] <= 1
    perfect = metrics.segmentation_scores(metrics.confusion_matrix(np.where(reference == 255, 0, reference),
                                                                   reference, 4))
    if (reference != 255).any():
        assert perfect["mean_iou"] == perfect["mean_accuracy"] == perfect["overall_accuracy"] == 1.0


def test_scores_from_summed_confusion_matrices_match_one_big_matrix():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 3, (8, 8)), rng.choice([0, 1, 2, 255], (8, 8))) for _ in range(5)]
    summed = sum(metrics.confusion_matrix(p, r, 3) for p, r in pairs)
    whole = metrics.confusion_matrix(np.concatenate([p for p, _ in pairs]), np.concatenate([r for _, r in pairs]), 3)
    assert (summed == whole).all() and summed.sum() == sum((r != 255).sum() for _, r in pairs)
    scores = metrics.segmentation_scores(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    assert scores["mean_iou"] == pytest.approx((3 / 4 + 2 / 3) / 2)  # class 2 absent from both: left out
    assert scores["overall_accuracy"] == pytest.approx(5 / 6) and np.isnan(scores["per_class_iou"][2])
    with pytest.raises(ValueError, match="class 5, outside 0..2"):
        metrics.confusion_matrix(np.zeros(4, int), np.array([0, 5, 1, 255]), 3)

"""taskzoo.visualize: boxes with labels and scores, masks with a legend, saved as PNG; and --save-visuals."""

import json

import numpy as np
import pytest
from PIL import Image

import taskzoo
from taskzoo.cli import main
from taskzoo.drawing import PALETTE


def grey(width=64, height=48):
    return Image.new("RGB", (width, height), (128, 128, 128))


def test_boxes_are_drawn_in_one_colour_per_label_with_a_tag(tmp_path):
    detections = [{"label": "cat", "score": 0.93, "box": {"xmin": 8, "ymin": 20, "xmax": 40, "ymax": 44}},
                  {"label": "dog", "score": 0.51, "box": [30.5, 4, 60, 30]}]
    picture = taskzoo.visualize(grey(), detections, path=tmp_path / "out" / "boxes.png")
    assert picture.mode == "RGB" and picture.size == (512, 384)  # enlarged 8x so the tags stay legible
    pixels = np.asarray(picture)
    cat, dog = PALETTE[0], PALETTE[1]  # colours by sorted label
    assert tuple(pixels[30 * 8, 8 * 8]) == cat  # on the left edge of the cat's box
    assert tuple(pixels[20 * 8, 60 * 8 - 1]) == dog  # on the right edge of the dog's box
    assert tuple(pixels[40 * 8, 20 * 8]) == (128, 128, 128)  # inside a box: the image shows through
    tag = pixels[20 * 8 - 8: 20 * 8, 8 * 8: 8 * 8 + 40]  # the cat's tag sits above its box: filled, with text
    assert (tag == cat).all(-1).mean() > 0.5 and not (tag == cat).all()
    saved = tmp_path / "out" / "boxes.png"
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(saved).size == picture.size


def test_masks_are_overlaid_with_a_legend_below():
    image = grey(320, 200)
    sky = np.zeros((200, 320), bool)
    sky[:80] = True
    road = Image.new("L", (320, 200))
    road.paste(255, (0, 150, 320, 200))
    segments = [{"label": "sky", "score": 0.98, "mask": sky}, {"label": "road", "score": 0.7, "mask": road}]
    picture = taskzoo.visualize(image, segments)
    assert picture.width == 640 and picture.height > 400  # enlarged 2x, and the legend strip added below
    pixels = np.asarray(picture).astype(int)
    road_colour, sky_colour = np.array(PALETTE[0]), np.array(PALETTE[1])  # sorted: road, sky
    assert np.abs(pixels[20, 20] - (128 + sky_colour) / 2).max() <= 1  # half-transparent tint
    assert np.abs(pixels[350, 20] - (128 + road_colour) / 2).max() <= 1
    assert tuple(pixels[240, 20]) == (128, 128, 128)  # no mask there
    legend = pixels[400:]
    assert (legend == sky_colour).all(-1).any() and (legend == road_colour).all(-1).any()


def test_any_image_form_an_empty_prediction_and_clear_errors(tmp_path):
    Image.new("RGB", (500, 400), (10, 20, 30)).save(tmp_path / "photo.jpg")
    assert taskzoo.visualize(str(tmp_path / "photo.jpg"), []).size == (500, 400)  # large: kept as is
    assert taskzoo.visualize(np.zeros((10, 20), np.uint8), []).size == (20 * 39, 10 * 39)
    with pytest.raises(ValueError, match="with a 'box' or a 'mask', or labels alone; item 1 is"):
        taskzoo.visualize(grey(), [{"label": "cat", "score": 0.5, "box": [0, 0, 9, 9]}, {"label": "cat"}])
    with pytest.raises(ValueError, match="item 0 is 'cat'"):
        taskzoo.visualize(grey(), ["cat"])
    with pytest.raises(ValueError, match="A mask is 10x10 but the image is 64x48"):
        taskzoo.visualize(grey(), [{"label": "x", "mask": Image.new("L", (10, 10))}])


def test_class_labels_are_written_below_the_image_with_score_bars():
    labels = [{"label": "circle", "score": 0.75}, {"label": "cross", "score": 0.2}, {"label": "square", "score": 0.04},
              {"label": "triangle", "score": 0.01}]
    picture = taskzoo.visualize(grey(32, 32), labels)
    assert picture.width == 32 * 12 and picture.height > 32 * 12  # enlarged, with rows of labels added below
    pixels = np.asarray(picture)
    assert tuple(pixels[100, 100]) == (128, 128, 128)  # the image itself is not drawn over
    rows = pixels[384:]
    row_height = (len(rows) - 6) // 3  # the top 3 labels (LABELS_SHOWN), one row each
    top_bar = (rows[: row_height + 3] == PALETTE[0]).all(-1).any(0)
    second_bar = (rows[row_height + 3: 2 * row_height + 3] == (200, 200, 200)).all(-1).any(0)
    # bars as long as the scores: 0.75 and 0.2 of the width (less the margins)
    assert abs(top_bar.sum() / (384 - 12) - 0.75) < 0.03 and abs(second_bar.sum() / (384 - 12) - 0.2) < 0.03
    one = taskzoo.visualize(grey(32, 32), {"label": "circle", "score": 0.9})  # one label, as a dict
    assert one.height == 384 + row_height + 6


def test_real_segmentation_predictions_draw(tiny_model_path):
    zoo = taskzoo.load("image-segmentation", model=tiny_model_path("image-segmentation"), device="cpu")
    image = grey(70, 50)
    picture = taskzoo.visualize(image, zoo.predict(image))
    assert picture.width == 70 * 8 and picture.height > 50 * 8


def test_cli_save_visuals_draws_detections(tiny_model_path, tmp_path, capsys):
    grey(80, 60).save(tmp_path / "street.png")
    code = main(["predict", "object-detection", "--model", str(tiny_model_path("object-detection")),
                 str(tmp_path / "street.png"), "--save-visuals", str(tmp_path / "visuals"), "--set", "threshold=0"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["visual"] == str(tmp_path / "visuals" / "000000-visual.png")
    assert Image.open(record["visual"]).size == (80 * 7, 60 * 7)
    assert record["output"] and set(record["output"][0]) == {"label", "score", "box"}

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset
from PIL import Image

import taskzoo
from taskzoo.errors import DataError
from taskzoo.strategies import count_parameters
from taskzoo.testing import toy_dataset

TASK = "image-classification"


@pytest.fixture(scope="module")
def trained(tiny_model_path):
    """The tiny ViT fine-tuned once on the toy shapes, shared by the tests below."""
    zoo = taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu")
    held_out = toy_dataset(TASK, 64, seed=1)
    before = zoo.evaluate(held_out)
    result = zoo.finetune(toy_dataset(TASK, 256, seed=0), eval=held_out, epochs=4, learning_rate=3e-3,
                          batch_size=16, progress=False, save_checkpoints=False, plot=False)
    return zoo, before, result, held_out


def relabelled(n, seed, names=("red", "green", "blue", "yellow")):
    data = toy_dataset(TASK, n, seed)
    return Dataset.from_dict({"image": data["image"], "label": data["label"]}).cast_column(
        "label", ClassLabel(names=list(names)))


def write_class_folders(root, data):
    names = data.features["label"].names
    for i, row in enumerate(data):
        folder = root / names[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].save(folder / f"{i}.png")


def test_finetuning_lifts_accuracy_from_chance_to_at_least_0_9(trained):
    zoo, before, result, held_out = trained
    assert before["accuracy"] <= 0.5  # 4 balanced classes: chance is 0.25
    after = zoo.evaluate(held_out)
    assert after["accuracy"] >= 0.9
    assert set(after) == {"accuracy", "macro_f1"}  # top5_accuracy only with 5 or more classes
    assert result.metric == "accuracy" and result.best_metric >= 0.9


def test_predict_gives_top_k_labels_with_scores(trained):
    zoo, _, _, held_out = trained
    image, label = held_out[0]["image"], zoo.labels[held_out[0]["label"]]
    ranked = zoo.predict(image)  # top_k defaults to 5, capped at the 4 classes
    assert [set(p) for p in ranked] == [{"label", "score"}] * 4
    assert ranked[0]["label"] == label
    assert [p["score"] for p in ranked] == sorted((p["score"] for p in ranked), reverse=True)
    assert sum(p["score"] for p in ranked) == pytest.approx(1.0, abs=1e-5)
    best = zoo.predict(image, top_k=1)
    assert len(best) == 1 and best[0]["label"] == label and best[0]["score"] == pytest.approx(ranked[0]["score"])
    images = [held_out[i]["image"] for i in range(5)]
    batched = zoo.predict(images, batch_size=2)
    assert [b[0]["label"] for b in batched] == [zoo.predict(im)[0]["label"] for im in images]
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        zoo.predict(image, top_k=0)


def test_predict_accepts_any_size_and_mode(trained, tmp_path):
    zoo, _, _, held_out = trained
    image = held_out[0]["image"]  # a 32 px RGB image
    expected = zoo.predict(image)[0]["label"]
    image.save(tmp_path / "shape.png")
    array = np.asarray(image)
    same_content = [image.convert("RGBA"), image.convert("P"), str(tmp_path / "shape.png"), tmp_path / "shape.png",
                    array, array.astype(np.float32) / 255, array.transpose(2, 0, 1)]
    for item in same_content:
        assert zoo.predict(item)[0]["label"] == expected, type(item)
    odd = [Image.new("L", (17, 301), 90), Image.new("1", (5, 3)), Image.new("RGBA", (640, 20), (9, 9, 9, 0)),
           Image.new("I;16", (33, 33)), np.zeros((7, 9), np.uint8), image.resize((97, 45))]
    for result in zoo.predict(odd, batch_size=4):
        assert len(result) == 4 and all(0 <= p["score"] <= 1 for p in result)


def test_a_corrupted_image_file_is_named(trained, tmp_path):
    zoo = trained[0]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"broken\.png is corrupted"):
        zoo.predict(str(tmp_path / "broken.png"))
    with pytest.raises(DataError, match=r"missing\.png does not exist"):
        zoo.predict(str(tmp_path / "missing.png"))
    write_class_folders(tmp_path / "data", toy_dataset(TASK, 8, seed=3))
    (tmp_path / "data" / "circle" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"circle/broken\.png is corrupted"):
        zoo.evaluate(str(tmp_path / "data"))


def test_worker_processes_preprocess_the_same_and_name_a_broken_file(trained, tmp_path):
    zoo, _, _, held_out = trained
    paths = []
    for i, row in enumerate(held_out.select(range(10))):
        row["image"].resize((40 + 7 * i, 90 - 5 * i)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    in_process = zoo.predict(paths, batch_size=3)
    assert zoo.predict(paths, batch_size=3, num_workers=2) == in_process  # same order, same scores
    (tmp_path / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"broken\.png is corrupted"):
        zoo.predict(paths + [str(tmp_path / "broken.png")], batch_size=3, num_workers=2)
    with pytest.raises(ValueError, match="num_workers must be a non-negative integer"):
        zoo.predict(paths, num_workers=-1)


def test_image_folders_and_tables_of_paths(tiny_model_path, tmp_path):
    write_class_folders(tmp_path / "folder" / "train", relabelled(32, 0))
    write_class_folders(tmp_path / "folder" / "validation", relabelled(16, 1))
    zoo = taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu")
    zoo.finetune(str(tmp_path / "folder"), max_steps=2, batch_size=8, progress=False, save_checkpoints=False)
    assert zoo.labels == ["blue", "green", "red", "yellow"]  # names from the class folders, sorted
    assert set(zoo.evaluate(str(tmp_path / "folder"))) == {"accuracy", "macro_f1"}  # the validation split
    # A CSV of image paths relative to the CSV itself, and a label column under another name.
    rows = [{"file": f"folder/validation/{p.parent.name}/{p.name}", "kind": p.parent.name}
            for p in sorted((tmp_path / "folder" / "validation").rglob("*.png"))]
    Dataset.from_list(rows).to_csv(tmp_path / "images.csv")
    assert zoo.evaluate(str(tmp_path / "images.csv"), columns={"file": "image", "kind": "label"}) == \
        zoo.evaluate(str(tmp_path / "folder"))
    (tmp_path / "folder" / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        zoo.finetune(str(tmp_path / "folder"), max_steps=1)


def test_a_class_named_like_a_split_stays_a_class_and_metadata_names_missing_files(tiny_model_path, tmp_path):
    zoo = taskzoo.load(TASK, model=tiny_model_path(TASK), device="cpu")
    write_class_folders(tmp_path / "vehicles", relabelled(12, 0, names=("bus", "car", "train", "van")))
    (tmp_path / "vehicles" / ".cache").mkdir()  # hidden folders are not classes
    data = zoo.read_path(tmp_path / "vehicles")
    assert data.features["label"].names == ["bus", "car", "train", "van"] and len(data) == 12
    names = data.features["label"].names
    assert all(Path(row["image"]["path"]).parent.name == names[row["label"]] for row in data)  # undecoded paths
    cars = (tmp_path / "vehicles" / "car").iterdir()
    lines = [json.dumps({"file_name": f"car/{p.name}", "label": "car"}) for p in cars]
    lines.append('{"file_name": "gone.png", "label": "car"}')
    (tmp_path / "vehicles" / "metadata.jsonl").write_text("\n".join(lines))
    with pytest.raises(DataError, match="1 missing file.*gone.png"):
        zoo.read_path(tmp_path / "vehicles")


def test_a_new_label_set_gets_a_head_of_the_right_size(trained, tmp_path):
    from transformers import AutoModelForImageClassification

    trained[0].save(tmp_path / "pretrained")
    zoo = taskzoo.load(TASK, model=tmp_path / "pretrained", device="cpu")
    names = ["a", "b", "c", "d", "e", "f"]
    rows = [{"image": row["image"], "label": names[i % 6]} for i, row in enumerate(toy_dataset(TASK, 24))]
    zoo.finetune(rows, max_steps=1, progress=False, save_checkpoints=False, plot=False)
    assert zoo.labels == names and zoo.model.classifier.out_features == 6
    assert set(zoo.evaluate(rows)) == {"accuracy", "macro_f1", "top5_accuracy"}
    zoo.save(tmp_path / "six")
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "six").config.id2label[5] == "f"
    with pytest.raises(DataError, match=r"labels the model does not know: \['g'\]"):
        zoo.evaluate([{"image": rows[0]["image"], "label": "g"}])


def test_top5_accuracy_counts_a_reference_among_the_five_best(trained):
    zoo = trained[0]
    zoo.model.config.num_labels = 6  # scoring alone: as if the model had 6 classes
    try:
        scores = zoo.compute_metrics([[3, 1, 0, 2, 5], [4, 0, 1, 2, 3], [0, 1, 2, 3, 4]], [3, 5, 1])
    finally:
        zoo.model.config.num_labels = 4
    assert scores["accuracy"] == pytest.approx(1 / 3) and scores["top5_accuracy"] == pytest.approx(2 / 3)


def test_save_load_round_trip_and_the_plain_transformers_pipeline(trained, tmp_path):
    from transformers import AutoImageProcessor, pipeline

    zoo, _, _, held_out = trained
    zoo.save(tmp_path / "saved")
    again = taskzoo.load(TASK, model=tmp_path / "saved", device="cpu")
    images = [held_out[i]["image"] for i in range(4)]
    assert again.predict(images) == zoo.predict(images)
    classifier = pipeline("image-classification", model=str(tmp_path / "saved"), device="cpu",
                          image_processor=AutoImageProcessor.from_pretrained(tmp_path / "saved", backend="pil"))
    assert classifier(images[0])[0]["label"] == zoo.predict(images[0])[0]["label"]


def rows_through(module: torch.nn.Module) -> list[int]:
    """The batch size of every forward pass through ``module`` from now on."""
    rows = []
    module.register_forward_hook(lambda _, args, kwargs, output: rows.append(output[0].shape[0]), with_kwargs=True)
    return rows


def test_freeze_trains_the_head_from_cached_features(trained, tmp_path):
    trained[0].save(tmp_path / "pretrained")
    zoo = taskzoo.load(TASK, model=tmp_path / "pretrained", device="cpu")
    zoo.prepare_for_training(relabelled(128, 0))  # the new head now, so that the body can be watched
    body = {k: v.clone() for k, v in zoo.model.vit.state_dict().items()}
    body_rows = rows_through(zoo.model.vit)
    zoo.finetune(relabelled(128, 0), epochs=3, learning_rate=5e-2, batch_size=16, strategy="freeze",
                 progress=False, save_checkpoints=False, plot=False)
    assert sum(body_rows) == 128  # one pass to fill the cache, not one per epoch
    assert zoo.cached_head == "classifier"
    trainable, total = count_parameters(zoo.model)
    assert trainable == sum(p.numel() for p in zoo.model.classifier.parameters()) < total / 10
    assert all(torch.equal(v, body[k]) for k, v in zoo.model.vit.state_dict().items())
    assert zoo.evaluate(relabelled(64, 1))["accuracy"] >= 0.9
    body_rows.clear()
    zoo.finetune(relabelled(32, 0), epochs=2, batch_size=16, strategy="freeze", cache_features=False,
                 progress=False, save_checkpoints=False, plot=False)
    assert sum(body_rows) == 2 * 32  # without the cache, the body runs every epoch


def test_convnext_family_fine_tunes_and_predicts(tmp_path):
    from taskzoo.tasks.image_classification import ImageClassification

    path = ImageClassification.tiny_model(tmp_path / "convnext", family="convnext")
    zoo = taskzoo.load(TASK, model=path, device="cpu")
    held_out = toy_dataset(TASK, 32, seed=1)
    zoo.finetune(toy_dataset(TASK, 256), epochs=3, learning_rate=3e-3, batch_size=16, progress=False,
                 save_checkpoints=False, plot=False)
    assert zoo.evaluate(held_out)["accuracy"] >= 0.9
    assert len(zoo.predict(Image.new("LA", (50, 70)))) == 4


def test_a_regression_head_reports_its_raw_value_as_the_pipeline_does(tiny_model_path, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    source = tiny_model_path(TASK)
    AutoModelForImageClassification.from_pretrained(source, num_labels=1, problem_type="regression",
                                                    ignore_mismatched_sizes=True).save_pretrained(tmp_path)
    AutoImageProcessor.from_pretrained(source).save_pretrained(tmp_path)
    zoo = taskzoo.load(TASK, model=tmp_path, device="cpu")
    images = list(toy_dataset(TASK, 3, seed=2)["image"])
    reference = pipeline("image-classification", model=str(tmp_path), device="cpu")(images)
    for ours, theirs in zip(zoo.predict(images), reference):
        assert [p["label"] for p in ours] == [p["label"] for p in theirs] == ["LABEL_0"]
        assert ours[0]["score"] == pytest.approx(theirs[0]["score"], abs=1e-5)

import json

import pytest
from datasets import Dataset, DatasetDict

import taskzoo
from taskzoo import audio, data
from taskzoo.errors import DataError

ROWS = [{"review": "good film", "sentiment": "positive"}, {"review": "bad film", "sentiment": "negative"}]


@pytest.mark.parametrize("kind", ["csv", "json", "jsonl", "parquet", "list", "dict", "dataset"])
def test_every_input_format_reads_the_same_rows(tmp_path, kind):
    table = Dataset.from_list(ROWS)
    source = {"list": ROWS, "dict": table.to_dict(), "dataset": table}.get(kind)
    if source is None:
        source = tmp_path / f"data.{kind}"
        if kind == "csv":
            table.to_csv(source)
        elif kind == "parquet":
            table.to_parquet(source)
        elif kind == "json":
            source.write_text(json.dumps(ROWS))
        else:
            source.write_text("\n".join(json.dumps(row) for row in ROWS))
    dataset = data.to_dataset(source)
    assert dataset.to_list() == ROWS


def test_column_mapping_renames_and_keeps_every_row():
    dataset = data.rename_columns(Dataset.from_list(ROWS), {"review": "text", "sentiment": "label"})
    assert dataset.column_names == ["text", "label"] and len(dataset) == len(ROWS)


def test_mapping_an_absent_column_lists_the_columns():
    with pytest.raises(DataError, match=r"no such column.*\['review', 'sentiment'\]"):
        data.rename_columns(Dataset.from_list(ROWS), {"txt": "text"})


def test_missing_column_is_named_with_the_columns_present(tiny_model_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    with pytest.raises(DataError, match=r"no column 'text'.*Columns present: \['review', 'sentiment'\]"):
        zoo.evaluate(ROWS)


def test_empty_data_is_refused(tiny_model_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    with pytest.raises(DataError, match="empty"):
        zoo.finetune(Dataset.from_dict({"text": [], "label": []}))
    with pytest.raises(DataError, match="empty list"):
        zoo.evaluate([])


def test_datasetdict_splits_are_used():
    splits = DatasetDict(train=Dataset.from_list(ROWS), validation=Dataset.from_list(ROWS[:1]))
    assert len(data.pick_split(splits, "train")) == 2
    assert len(data.pick_split(splits, "eval")) == 1
    with pytest.raises(DataError, match="no 'train' split"):
        data.pick_split(DatasetDict(test=Dataset.from_list(ROWS)), "train")


def test_unknown_file_format_and_missing_file(tmp_path):
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown format '.xlsx'"):
        data.read_table(tmp_path / "data.xlsx")
    with pytest.raises(DataError, match="does not exist"):
        data.read_table(tmp_path / "absent.csv")


def test_corrupted_image_names_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DataError, match="broken.png"):
        data.load_image(str(broken))


def test_images_of_any_mode_become_rgb():
    import numpy as np
    from PIL import Image

    for image in [Image.new("L", (7, 5)), Image.new("RGBA", (7, 5)), Image.new("P", (7, 5)),
                  np.zeros((5, 7), np.uint8), np.zeros((3, 5, 7), np.float32)]:
        converted = data.load_image(image)
        assert converted.mode == "RGB" and converted.size == (7, 5)


def test_audio_is_decoded_downmixed_and_resampled(tmp_path):
    import numpy as np
    import soundfile

    rate = 8000
    seconds = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * seconds)] * 2, axis=1).astype(np.float32)
    soundfile.write(tmp_path / "tone.wav", stereo, rate)
    waveform = audio.load_audio(str(tmp_path / "tone.wav"), 16000)
    assert waveform.ndim == 1 and abs(len(waveform) - 16000) <= 1
    assert audio.load_audio({"array": stereo[:, 0], "sampling_rate": rate}, 16000).shape == waveform.shape
    (tmp_path / "fake.wav").write_text("not audio")
    with pytest.raises(DataError, match="fake.wav"):
        audio.load_audio(str(tmp_path / "fake.wav"), 16000)

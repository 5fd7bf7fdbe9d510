"""Prediction at scale: rows of a file or folder -> one JSON line per row, in order, resumable, over N processes."""

import base64
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import taskzoo
from taskzoo.errors import DataError
from taskzoo.result_files import OutputFiles, json_line
from taskzoo.testing import toy_dataset

ROWS = 6000  # enough that a run can be killed after its first block (256 rows) and well before its end


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_same_outputs(got: list, expected: list) -> None:
    """Equal predictions, allowing for the float noise of different batch compositions."""
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        mine, theirs = (x if isinstance(x, list) else [x] for x in (mine, theirs))
        assert [item["label"] for item in mine] == [item["label"] for item in theirs]
        assert [item["score"] for item in mine] == pytest.approx([item["score"] for item in theirs], abs=1e-5)


def taskzoo_cli(*args, launcher=(sys.executable,), env=None, **popen):
    command = [*launcher, "-m", "taskzoo.cli", "predict", *map(str, args)]
    if popen:
        return subprocess.Popen(command, env=env, **popen)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def torchrun(port: int) -> tuple:
    return (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port))


CPU_PROCESSES = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def classifier(tiny_model_path):
    path = tiny_model_path("text-classification")
    return path, taskzoo.load("text-classification", model=path, device="cpu")


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, classifier):
    """csv_run(rows) -> a CSV of that many texts with ids, and its straight 1-process CLI run (in this process):
    the reference for the others. Each size is written and predicted once per module."""
    runs = {}

    def get(rows: int):
        if rows not in runs:
            folder = tmp_path_factory.mktemp(f"rows{rows}")
            texts = [f"{'a good' if i % 3 else 'an awful'} film, number {i}" + " indeed" * (i % 7) for i in range(rows)]
            with open(folder / "reviews.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([("id", "text"), *((f"k{i}", text) for i, text in enumerate(texts))])
            from taskzoo.cli import main

            assert main(["predict", "text-classification", "--model", str(classifier[0]), "--data",
                         str(folder / "reviews.csv"), "--output", str(folder / "straight.jsonl"),
                         "--batch-size", "16"]) == 0
            runs[rows] = folder / "reviews.csv", texts, read_lines(folder / "straight.jsonl")
        return runs[rows]
    return get


@pytest.fixture(scope="module")
def big_csv(csv_run):
    """ROWS rows: enough for a run to be killed mid-way."""
    return csv_run(ROWS)


@pytest.fixture(scope="module")
def small_csv(csv_run):
    """Three blocks of rows (256 per block): enough for order, ids and a split between two processes."""
    return csv_run(600)


# ------------------------------------------------------------------------------------ one process
def test_cli_data_gives_one_line_per_row_in_order_with_ids(classifier, small_csv):
    _, zoo = classifier
    _, texts, lines = small_csv
    assert [line["index"] for line in lines] == list(range(len(texts)))
    assert [line["id"] for line in lines] == [f"k{i}" for i in range(len(texts))]
    assert_same_outputs([line["output"] for line in lines], zoo.predict(texts, batch_size=16))


def test_jsonl_pairs_and_singles_mixed_with_columns_renamed(classifier, tmp_path):
    _, zoo = classifier
    rows = [{"key": f"r{i}", "review": f"film {i} was fine", "second": None if i % 2 else "or was it"}
            for i in range(300)]  # two blocks; pairs and single texts interleaved
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    zoo.predict_to_jsonl(tmp_path / "rows.jsonl", tmp_path / "out.jsonl", id_column="key",
                         columns={"review": "text", "second": "text_pair"})
    lines = read_lines(tmp_path / "out.jsonl")
    assert [(line["index"], line["key"]) for line in lines] == [(i, f"r{i}") for i in range(300)]
    inputs = [(row["review"], row["second"]) if row["second"] else row["review"] for row in rows]
    assert_same_outputs([line["output"] for line in lines], [zoo.predict(item) for item in inputs])


def test_image_folder_csv_of_relative_paths_and_dataset(tiny_model_path, tmp_path):
    zoo = taskzoo.load("image-classification", model=tiny_model_path("image-classification"), device="cpu")
    data = toy_dataset("image-classification", 5, seed=0)
    folder = tmp_path / "photos"
    folder.mkdir()
    names = [f"{name}.png" for name in ("e", "b", "d", "a", "c")]
    for name, image, size in zip(names, data["image"], (32, 40, 24, 32, 50)):
        image.resize((size, size)).save(folder / name)
    expected = zoo.predict([str(folder / name) for name in sorted(names)], top_k=2)

    zoo.predict_to_jsonl(folder, tmp_path / "folder.jsonl", top_k=2)  # a plain folder: its files by name
    lines = read_lines(tmp_path / "folder.jsonl")
    assert [line["id"] for line in lines] == sorted(names)
    assert_same_outputs([line["output"] for line in lines], expected)

    (folder / "list.csv").write_text("id,image\n" + "".join(f"{i},{name}\n" for i, name in enumerate(sorted(names))))
    zoo.predict_to_jsonl(folder / "list.csv", tmp_path / "table.jsonl", top_k=2)  # paths relative to the CSV
    assert_same_outputs([line["output"] for line in read_lines(tmp_path / "table.jsonl")], expected)

    zoo.predict_to_jsonl(data, tmp_path / "dataset.jsonl", top_k=2)  # a Dataset with a decoded Image column
    assert_same_outputs([line["output"] for line in read_lines(tmp_path / "dataset.jsonl")],
                        zoo.predict(list(data["image"]), top_k=2))


def test_coco_json_and_audio_folder(tiny_model_path, tmp_path):
    from taskzoo.detection_data import read_coco, write_coco

    detector = taskzoo.load("object-detection", model=tiny_model_path("object-detection"), device="cpu")
    coco = write_coco(toy_dataset("object-detection", 3, seed=0), tmp_path / "coco" / "annotations.json")
    detector.predict_to_jsonl(coco, tmp_path / "boxes.jsonl", threshold=0.0)
    lines = read_lines(tmp_path / "boxes.jsonl")
    images = list(read_coco(coco)["image"])
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert [line["output"] for line in lines] == json.loads(json.dumps(detector.predict(images, threshold=0.0)))

    asr = taskzoo.load("asr", model=tiny_model_path("automatic-speech-recognition"), device="cpu")
    speech, folder = toy_dataset("automatic-speech-recognition", 3, seed=0), tmp_path / "speech"
    folder.mkdir()
    for i, path in enumerate(speech["audio"]):
        (folder / f"clip{i}.wav").write_bytes(Path(path).read_bytes())
    asr.predict_to_jsonl(folder, tmp_path / "texts.jsonl")
    lines = read_lines(tmp_path / "texts.jsonl")
    assert [line["id"] for line in lines] == ["clip0.wav", "clip1.wav", "clip2.wav"]
    assert [line["output"] for line in lines] == asr.predict([str(folder / line["id"]) for line in lines])


def test_bad_rows_are_named_by_number_and_column(classifier, tiny_model_path, tmp_path):
    _, zoo = classifier
    (tmp_path / "gap.csv").write_text("id,text\n1,fine\n2,good\n3,\n4,bad\n")
    with pytest.raises(DataError, match=r"Row 2 of .*gap.csv has no value in column 'text'"):
        zoo.predict_to_jsonl(tmp_path / "gap.csv", tmp_path / "out.jsonl")
    (tmp_path / "other.csv").write_text("id,review\n1,fine\n")
    with pytest.raises(DataError, match=r"Row 0 of .*other.csv has no column 'text'.*\['id', 'review'\]"):
        zoo.predict_to_jsonl(tmp_path / "other.csv", tmp_path / "out.jsonl")
    with pytest.raises(DataError, match=r"no column 'key'.*\['id', 'review'\]"):
        zoo.predict_to_jsonl(tmp_path / "other.csv", tmp_path / "out.jsonl", id_column="key")
    with pytest.raises(DataError, match="cannot be called 'index'"):
        zoo.predict_to_jsonl(tmp_path / "other.csv", tmp_path / "out.jsonl", id_column="index")

    images = taskzoo.load("image-classification", model=tiny_model_path("image-classification"), device="cpu")
    toy_dataset("image-classification", 1)["image"][0].save(tmp_path / "ok.png")
    (tmp_path / "images.csv").write_text("image\nok.png\nok.png\ngone.png\nok.png\n")
    with pytest.raises(DataError, match=r"Row 2 of .*images.csv \(column 'image'\): Image file .*gone.png does not"):
        images.predict_to_jsonl(tmp_path / "images.csv", tmp_path / "out.jsonl")
    assert len(read_lines(tmp_path / "out.jsonl")) == 0  # nothing of the failed block was written


def test_resume_continues_a_torn_file_and_refuses_another_world_size(classifier, tmp_path):
    _, zoo = classifier
    rows = [{"id": i, "text": f"review {i}"} for i in range(700)]
    full = read_lines(zoo.predict_to_jsonl(rows, tmp_path / "full.jsonl"))
    text = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_text("".join(text[:300]) + text[300][:25])  # killed mid-line
    zoo.predict_to_jsonl(rows, tmp_path / "cut.jsonl", resume=True)
    assert read_lines(tmp_path / "cut.jsonl") == full
    zoo.predict_to_jsonl(rows, tmp_path / "cut.jsonl", resume=True)  # finished already: nothing changes
    assert read_lines(tmp_path / "cut.jsonl") == full

    (tmp_path / "cut.jsonl.part-1-of-2").write_text("")  # a 2-process run was interrupted here
    with pytest.raises(DataError, match="written by 2 processes.*resume it with 2 processes"):
        zoo.predict_to_jsonl(rows, tmp_path / "cut.jsonl", resume=True)


def test_part_files_resume_and_merge_in_row_order(tmp_path):
    """What N processes leave behind: OUT holds rows 0..k-1 (an earlier 1-process run), part r the rows from
    k on that equal r modulo N, the last line of one torn by the kill."""
    def lines(rows) -> str:
        return "".join(json.dumps({"index": i, "output": i}) + "\n" for i in rows)

    output = tmp_path / "out.jsonl"
    output.write_text(lines(range(5)))
    files = [OutputFiles(output, rank, 3) for rank in range(3)]
    for rank, rows in {0: [6, 9], 1: [7], 2: [5, 8]}.items():
        files[rank].mine.write_text(lines(rows) + ('{"index": 10, "out' if rank == 1 else ""))
    assert files[0].start(resume=True) == 10  # 5 in OUT, 5 complete lines in the parts
    assert files[1].mine.read_text() == lines([7])  # the torn line is gone
    assert [f.first_row() for f in files] == [12, 10, 11]
    for rank, rows in {0: [12], 2: [11]}.items():  # the resumed processes finish their rows...
        with open(files[rank].mine, "a") as handle:
            handle.write(lines(rows))
    with pytest.raises(DataError, match=r"skip or repeat a row \(row 10 expected, row 11 found\)"):  # ...but for one
        files[0].merge()
    with open(files[1].mine, "a") as handle:
        handle.write(lines([10]))
    files[0].merge()
    assert [line["index"] for line in read_lines(output)] == list(range(13))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_images_in_outputs_become_png_data_or_files(tmp_path):
    class Task:  # what json_line asks of a task
        name = "text-to-image"

        def draw(self, input, output):
            return None  # (text-to-image draws nothing over its prompt: its output is the picture)

    image = Image.new("RGB", (8, 6), (200, 10, 30))
    inline = json.loads(json_line(Task(), 3, {"id": "a"}, "a red", {"image": image}))
    assert inline["index"] == 3 and inline["id"] == "a"
    data = inline["output"]["image"].removeprefix("data:image/png;base64,")
    assert list(Image.open(io.BytesIO(base64.b64decode(data))).getdata()) == list(image.getdata())
    saved = json.loads(json_line(Task(), 3, {}, "a red", {"image": image}, visuals=tmp_path))
    assert list(Image.open(saved["output"]["image"]).getdata()) == list(image.getdata())


def test_processes_launched_without_a_distributed_accelerator_are_refused(classifier, monkeypatch, tmp_path):
    # The check lives in new_accelerator() (taskzoo/accelerators.py), which prediction goes through.
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(taskzoo.TaskzooError, match=r"WORLD_SIZE=4.*ACCELERATE_USE_CPU=1"):
        classifier[1].predict_to_jsonl([{"text": "a film"}], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------------- killed, resumed, N processes
def wait_for_lines(process, paths, deadline_s=400) -> None:
    deadline = time.time() + deadline_s
    while not all(path.exists() and path.stat().st_size > 0 for path in paths):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)


@pytest.mark.slow  # two processes over 6000 rows; a torn file's resume: test_resume_continues_a_torn_file_...
def test_resume_after_sigkill_completes_without_duplicates_or_gaps(classifier, big_csv, tmp_path):
    table, _, straight = big_csv
    output = tmp_path / "out.jsonl"
    args = ("text-classification", "--model", classifier[0], "--data", table, "--output", output, "--batch-size", "16")
    process = taskzoo_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_lines(process, [output])
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(output.read_text().splitlines())
    assert 0 < done < ROWS  # it really died mid-run

    resumed = taskzoo_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming:" in resumed.stderr and "inputs already in" in resumed.stderr
    assert read_lines(output) == straight


def test_two_processes_write_the_one_process_file(classifier, small_csv, tmp_path):
    table, _, straight = small_csv
    launched = taskzoo_cli("text-classification", "--model", classifier[0], "--data", table, "--output",
                           tmp_path / "two.jsonl", "--batch-size", "16", launcher=torchrun(29591), env=CPU_PROCESSES)
    assert launched.returncode == 0, launched.stderr[-3000:]
    lines = read_lines(tmp_path / "two.jsonl")
    assert [(line["index"], line["id"]) for line in lines] == [(line["index"], line["id"]) for line in straight]
    assert_same_outputs([line["output"] for line in lines], [line["output"] for line in straight])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.jsonl"]  # the part files are gone


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    family, index = [pid], 0
    while index < len(family):
        family += children.get(family[index], [])
        index += 1
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc")
def test_two_processes_killed_and_resumed(classifier, big_csv, tmp_path):
    table, _, straight = big_csv
    output = tmp_path / "out.jsonl"
    args = ("text-classification", "--model", classifier[0], "--data", table, "--output", output, "--batch-size", "16")
    process = taskzoo_cli(*args, launcher=torchrun(29592), env=CPU_PROCESSES, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    wait_for_lines(process, [OutputFiles(output, rank, 2).mine for rank in (0, 1)])
    kill_tree(process.pid)
    process.wait()
    assert not output.exists() or output.stat().st_size == 0  # killed before the merge

    resumed = taskzoo_cli(*args, "--resume", launcher=torchrun(29593), env=CPU_PROCESSES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = read_lines(output)
    assert [line["index"] for line in lines] == list(range(ROWS))
    assert_same_outputs([line["output"] for line in lines], [line["output"] for line in straight])

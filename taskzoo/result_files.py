"""The JSON lines files that predict writes: one line per input, the outputs made JSON, crash-safe resume,
and the merge of the part files that several processes write.

A line is ``{"index": row, ...kept fields, "output": ...}``. Under N processes, process r writes the rows
equal to r modulo N into ``OUT.part-r-of-N``; the main process merges the parts into OUT by row index.
"""

from __future__ import annotations

import glob
import heapq
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from taskzoo.data import is_image, png_base64
from taskzoo.errors import DataError


def json_line(task, index: int, fields: Mapping, item, output, visuals: str | os.PathLike | None = None) -> str:
    """One output line: ``{"index", **fields, "output"}``. Images in the output become PNG files in
    ``visuals`` (their paths in the JSON), or base64 PNG data URLs without it; with ``visuals`` the output is
    also drawn over its input where the task draws its outputs (``task.draw``: labels, boxes, masks)."""
    record = {"index": index, **fields}
    drawing = task.draw(item, output) if visuals else None
    if drawing is not None:
        path = Path(visuals) / f"{index:06d}-visual.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        drawing.save(path, format="PNG")
        record["visual"] = str(path)
    if visuals:
        output = _save_images(output, Path(visuals), f"{index:06d}")
    return json.dumps({**record, "output": output}, default=_json_default) + "\n"


def _json_default(value):
    if is_image(value):  # PIL images: lossless PNG, as a data URL
        return png_base64(value, data_url=True)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    return str(value)


def _save_images(value, folder: Path, stem: str):
    """Replace the PIL images inside an output by the paths of PNG files written for them."""
    if is_image(value):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.png"
        value.save(path)
        return str(path)
    if isinstance(value, dict):
        return {key: _save_images(item, folder, f"{stem}-{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_save_images(item, folder, f"{stem}-{i}") for i, item in enumerate(value)]
    return value


class OutputFiles:
    """OUT and, under N processes, one part file per process: checking and trimming what an interrupted run
    left, where each process resumes, and the final merge. OUT always holds rows 0..k-1 in order; the part
    of process r holds, in order, the rows from k on that equal r modulo N."""

    def __init__(self, output: Path, rank: int, world: int):
        self.output, self.rank, self.world = output, rank, world
        self.mine = output if world == 1 else self.part(rank)

    def part(self, rank: int) -> Path:
        return self.output.with_name(f"{self.output.name}.part-{rank}-of-{self.world}")

    def existing_parts(self) -> list[tuple[Path, int]]:
        pattern = re.compile(re.escape(self.output.name) + r"\.part-\d+-of-(\d+)$")
        found = [(path, pattern.match(path.name))
                 for path in self.output.parent.glob(glob.escape(self.output.name) + ".part-*")]
        return sorted((path, int(match.group(1))) for path, match in found if match)

    def start(self, resume: bool) -> int:
        """Main process: clear an earlier run's files, or (resume) check and trim them; returns the rows done."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            for path, _ in self.existing_parts():
                path.unlink()
            self.output.unlink(missing_ok=True)
            self.output.touch()
            return 0
        done = _complete_lines(self.output, lambda number: number)
        parts = []
        for path, world in self.existing_parts():
            first = _first_index(path)
            if first is not None and first < done:
                path.unlink()  # merged into OUT already, by a run killed right after its merge
            else:
                parts.append((path, world))
        other = next((world for _, world in parts if world != self.world), None)
        if other is not None:
            raise DataError(f"{self.output} was being written by {other} processes (see its part files "
                            f"{self.output.name}.part-*-of-{other}): resume it with {other} processes, "
                            "or start over without resume.")
        in_parts = 0
        for rank in range(self.world if self.world > 1 else 0):
            first = self.first_of(rank, done)
            in_parts += _complete_lines(self.part(rank), lambda number, first=first: first + number * self.world)
        return done + in_parts

    def first_of(self, rank: int, done: int) -> int:
        """The first row from ``done`` on that process ``rank`` predicts."""
        return done + (rank - done) % self.world

    def first_row(self) -> int:
        """Where this process resumes (once the main process has trimmed the files)."""
        done = _count_lines(self.output)
        if self.world == 1:
            return done
        return self.first_of(self.rank, done) + _count_lines(self.mine) * self.world

    def merge(self) -> None:
        """Main process, once every part is complete: OUT := OUT's rows, then the parts' rows by index."""
        merging = self.output.with_name(self.output.name + ".merging")
        sources = [self.output, *(self.part(rank) for rank in range(self.world))]
        try:
            with open(merging, "wb") as handle:
                for expected, (index, line) in enumerate(heapq.merge(*map(_indexed_lines, sources))):
                    if index != expected:
                        raise DataError(f"Cannot merge {self.output}: its part files skip or repeat a row (row "
                                        f"{expected} expected, row {index} found); run again with resume.")
                    handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            merging.unlink(missing_ok=True)
            raise
        os.replace(merging, self.output)
        for rank in range(self.world):
            self.part(rank).unlink(missing_ok=True)


def _complete_lines(path: Path, expected) -> int:
    """How many complete lines ``path`` holds, line n being the result for row ``expected(n)``; a torn last
    line (killed mid-write) is cut off, any other surprise refused. 0 when there is no file."""
    if not path.exists():
        return 0
    count = kept = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                index = json.loads(line)["index"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path} line {count + 1} is not a result line; cannot resume from it.") from None
            if index != expected(count):
                raise DataError(f"{path} line {count + 1} is row {index}, not row {expected(count)}; "
                                "cannot resume from it.")
            count, kept = count + 1, kept + len(line)
    if kept < path.stat().st_size:
        os.truncate(path, kept)
    return count


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def _first_index(path: Path) -> int | None:
    with open(path, "rb") as handle:
        line = handle.readline()
    try:
        return json.loads(line)["index"] if line.endswith(b"\n") else None
    except (ValueError, KeyError, TypeError):
        return None


def _indexed_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    if path.exists():
        with open(path, "rb") as handle:
            for line in handle:
                yield json.loads(line)["index"], line

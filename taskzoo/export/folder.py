"""An export folder: writing it (``export_task``) and recognising and loading it (``read_export``, ``load_export``).

The folder holds the graph(s) (``model.onnx``, or ``encoder.onnx`` + ``decoder.onnx`` ...), what the task
saves beside them (the tokenizer or processor, ``config.json`` with the labels) and ``taskzoo.json``: the task's
own settings, if it keeps any there, plus ``"format": "onnx"``, the task, ``quantize``, each graph's file, inputs,
outputs, exporter, optimizations and quantization, the opset and the versions that made it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from taskzoo.errors import ExportError, ModelNotFoundError
from taskzoo.export.exporting import OPSETS, export_graph

INFO_FILE = "taskzoo.json"
FORMATS = ("onnx",)
QUANTIZE = (None, "int8")


def read_export(path: str | os.PathLike) -> dict | None:
    """The export's taskzoo.json when ``path`` is an export folder, else None (a torch model folder, whose
    taskzoo.json, if any, holds a task's settings alone)."""
    file = Path(path) / INFO_FILE
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ModelNotFoundError(f"{file} is not valid JSON ({error}).") from None
    return info if isinstance(info, dict) and info.get("format") in FORMATS else None


def export_task(task, path: str | os.PathLike, format: str = "onnx", quantize: str | None = None) -> Path:
    """Export a loaded task's model into ``path`` (see Task.export)."""
    import torch

    import taskzoo
    from taskzoo.export.runtime import onnxruntime

    if format not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}; got {format!r}.")
    if quantize not in QUANTIZE:
        raise ExportError(f"quantize must be None (fp32) or 'int8'; got {quantize!r}.")
    if task.exported:
        raise ExportError(f"{task.source} is already an ONNX export; export the torch model it came from "
                          f"(quantize={quantize!r} included).")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path} is a file; export writes a folder.")
    device = task.device
    task.model.to("cpu")  # traced on the CPU (the graph runs wherever ONNX Runtime runs it), then put back
    task.device = torch.device("cpu")
    path.mkdir(parents=True, exist_ok=True)
    try:
        described = _export_graphs(task.export_graphs(), path, quantize)
    finally:
        task.model.to(device)
        task.device = device
    task.save_export_files(path)
    own = json.loads((path / INFO_FILE).read_text()) if (path / INFO_FILE).is_file() else {}
    info = {**own, "format": format, "task": task.name, "quantize": quantize, "graphs": described,
            "source": str(task.source) if task.source else None, "versions": {
                "taskzoo": taskzoo.__version__, "torch": torch.__version__, "onnxruntime": onnxruntime().__version__}}
    (path / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return path


def _export_graphs(graphs: list, path: Path, quantize: str | None) -> dict:
    """Each graph traced, optimized and (int8) quantized into ``path``; returns their taskzoo.json entries."""
    from taskzoo.export import optimizing, quantizing

    described = {}
    with tempfile.TemporaryDirectory() as scratch:
        for graph in graphs:
            raw, optimized = Path(scratch) / graph.file, Path(scratch) / f"{graph.name}.optimized.onnx"
            exporter = export_graph(graph, Path(scratch))
            entry = {"file": graph.file, "inputs": list(graph.inputs), "outputs": list(graph.outputs),
                     "exporter": exporter, "opset": OPSETS[exporter],
                     "optimized": optimizing.optimize(raw, optimized, graph), "quantized": None}
            if quantize == "int8" and graph.quantize_ops:
                entry["quantized"] = quantizing.quantize(optimized, path / graph.file, graph, traced=raw)
            else:
                shutil.copyfile(optimized, path / graph.file)
            described[graph.name] = entry
    return described


def copy_export(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """An export's save(): its folder as it is, copied to ``path``."""
    source, path = Path(source).resolve(), Path(path)
    if path.exists() and path.resolve() == source:
        return path
    shutil.copytree(source, path, dirs_exist_ok=True)
    return path


def load_export(task_class, path: Path, info: dict, device: Any = None, **options):
    """The task of ``task_class`` around the export in ``path``: one ONNX Runtime session per graph, on
    ``device`` (None: CUDA where onnxruntime has it, else the CPU), handed to the task's ``from_exported``."""
    from taskzoo.export.runtime import Session

    if info.get("task") != task_class.name:
        raise ModelNotFoundError(f"{path} is an ONNX export of a {info.get('task')} model, not {task_class.name}.")
    graphs = info.get("graphs") or {}
    missing = [entry["file"] for entry in graphs.values() if not (path / entry["file"]).is_file()]
    if not graphs or missing:
        raise ModelNotFoundError(f"{path} is an incomplete ONNX export: {', '.join(missing) or 'no graphs'} missing.")
    sessions = {name: Session(path / entry["file"], device) for name, entry in graphs.items()}
    task = task_class.from_exported(path, sessions, **options)
    task.exported = info
    return task

"""What every task has for export (``Task`` inherits it): ``export``, the hooks a task overrides to opt in
(``export_graphs``, ``save_export_files``, ``from_exported``; see taskzoo/export/__init__.py) and the refusal of
what only the torch model does."""

from __future__ import annotations

import os
from pathlib import Path

from taskzoo.errors import ExportError


class Exportable:
    exported: dict | None = None  # an ONNX export's taskzoo.json where the model is one (see taskzoo/export/)

    def export(self, path: str | os.PathLike, format: str = "onnx", quantize: str | None = None) -> Path:
        """Export the model for inference with ONNX Runtime into the folder ``path``: the graph(s), the processor,
        the labels and taskzoo.json; ``quantize="int8"`` stores the weights of the matrix products as int8.
        ``taskzoo.load(task, model=path)`` predicts and evaluates with it as with this task. See docs/export.md."""
        from taskzoo.export import export_task

        return export_task(self, path, format=format, quantize=quantize)

    def export_graphs(self) -> list:
        """What export() traces: a list of :class:`taskzoo.export.Graph`. Default: none (a clear error)."""
        raise ExportError(f"{self.name} cannot be exported to ONNX yet; predict with the torch model.")

    def save_export_files(self, path: Path) -> None:
        """What an export holds beside its graphs: the processor and the config (labels). A task may also write
        settings into path/taskzoo.json, which the export keeps."""
        self.processor.save_pretrained(path)
        self.model.config.save_pretrained(path)

    @classmethod
    def from_exported(cls, path: Path, sessions: dict, **options) -> Exportable:
        """The task around an export: ``sessions`` holds a :class:`taskzoo.export.Session` per graph (the model
        stands in as :class:`taskzoo.export.ExportedModel`, on the CPU as far as torch is concerned)."""
        raise ExportError(f"{cls.name} cannot load ONNX exports.")

    def refuse_if_exported(self, what: str) -> None:
        if self.exported:
            raise ExportError(f"{self.source} is an ONNX export for inference; {what} the torch model it came from.")

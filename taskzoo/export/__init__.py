"""Export to ONNX Runtime (fp32 or int8) for fast inference, with the same predict / evaluate / serve API.

``zoo.export(path, quantize=None | "int8")`` (or ``taskzoo export TASK --model M --output DIR``) writes a folder;
``taskzoo.load(task, model=DIR)`` recognises it by its taskzoo.json (``"format": "onnx"``) and builds the task
around ONNX Runtime sessions instead of the torch model. Fine-tuning stays in torch. See docs/export.md.

How it is built (one job per module):

- exporting.py: :class:`Graph`, what a task asks to export, and torch -> ONNX (``torch.onnx.export``);
- optimizing.py: graph optimizations at export time (ONNX Runtime's transformer fusions, or its own optimizer);
- quantizing.py: int8 by dynamic quantization of the weights, and what stays fp32;
- runtime.py: :class:`Session` (one graph in ONNX Runtime) and :class:`ExportedModel`, the stand-in for the torch
  model: ``model(**inputs)`` returns a ModelOutput of torch tensors, so a task's predict code runs unchanged;
- folder.py: writing the folder and taskzoo.json, recognising and loading it;
- hooks.py: ``Task.export`` and the hooks below (``Task`` inherits them from :class:`hooks.Exportable`).

How a task opts in (three methods of :class:`taskzoo.task.Task`):

- ``export_graphs()`` returns the graphs to trace: ``Graph(name, module, example inputs, output names, dynamic
  axes, optimizations, quantization)``; most tasks return one graph named "model" around ``self.model``;
- ``save_export_files(path)`` writes what loading needs beside the graphs (default: the processor and config.json;
  a task may add its settings to path/taskzoo.json, which the export keeps);
- ``from_exported(path, sessions, **options)`` (a classmethod) builds the task: ``sessions`` maps each graph's
  name to its :class:`Session`; wrap one in :class:`ExportedModel` with the saved config (``exported_model``
  does both) and pass it where the torch model goes. Torch-side tensors stay on the CPU; ONNX Runtime runs on the
  session's device.

An encoder-decoder (translation, Whisper) returns three graphs from ``encoder_decoder_graphs``
(seq2seq_graphs.py: encoder, cross-attention keys and values, one decoder step with the past keys and values as
named inputs and outputs), and ``from_exported`` passes ``encoder_decoder_model`` (seq2seq_runtime.py: the
checkpoint's own transformers class over the sessions, so its ``generate`` runs beam search, Whisper's prompt and
timestamps as on the torch model; plain greedy decoding takes seq2seq_greedy.py's loop) where the torch model goes;
everything else here (folder, taskzoo.json, loading, the refusals of fine-tuning, serving) is shared.
"""

from taskzoo.errors import ExportError
from taskzoo.export.exporting import Graph
from taskzoo.export.folder import export_task, load_export, read_export
from taskzoo.export.runtime import ExportedModel, Session, exported_model

__all__ = ["ExportError", "ExportedModel", "Graph", "Session", "export_task", "exported_model", "load_export",
           "read_export"]

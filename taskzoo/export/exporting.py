"""torch -> ONNX: one :class:`Graph` (what a task's ``export_graphs()`` describes) into one ``.onnx`` file.

``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript) is tried first: it is the maintained
exporter, and it keeps the graph's input names and named dynamic axes. Where it fails (an operator torch.export
cannot trace, say), the TorchScript exporter (``dynamo=False``) is tried, and the folder's taskzoo.json records
which one made each graph. ``Graph.exporter`` pins one of them where measurements favour it: BERT-family
encoders (see optimizing.fusions_for) take the TorchScript exporter with eager attention, whose graph ONNX
Runtime's transformer optimizer fuses whole (embeddings, attention) and which ran 5-10% faster than the dynamo
graph on the MiniLM classifier (CPU time, fp32 and int8); the dynamo graph's attention is not fused.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
OPSETS = {"dynamo": 18, "torchscript": 17}  # each exporter's own; ONNX Runtime 1.17 and later run both


@dataclass
class Graph:
    """One ONNX graph of an export.

    ``module(**inputs)`` is traced with the example ``inputs`` (their order is the graph's input order) and
    must return a mapping or ModelOutput holding ``outputs`` (or a tuple of them, in that order). ``dynamic``
    names the axes that vary, ``{"input_ids": {0: "batch", 1: "sequence"}}``: axes of one name are one size.
    ``optimize`` is the ``onnxruntime.transformers`` model type whose fusions apply ("bert", "vit", ...;
    ``optimize_options`` gives its ``num_heads`` and ``hidden_size``), None for ONNX Runtime's own graph
    optimizations alone. ``quantize`` is what int8 does to this graph: the operator types whose weights
    become int8 (empty: the graph stays fp32), and the nodes kept fp32 by name (substrings)."""

    name: str
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    optimize: str | None = None
    optimize_options: dict = field(default_factory=dict)
    quantize_ops: tuple[str, ...] = ("MatMul", "Attention")
    keep_fp32: tuple[str, ...] = ()
    exporter: str | None = None  # "dynamo" or "torchscript" to use only that one
    eager_attention: bool = False  # trace attention as written out (matmul, softmax), the form fusions recognise

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


class _Selected(torch.nn.Module):
    """The graph's module with positional tensor inputs and a tuple of the chosen outputs, as the exporters want."""

    def __init__(self, module: torch.nn.Module, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.module, self.input_names, self.output_names = module, input_names, output_names

    def forward(self, *tensors):
        outputs = self.module(**dict(zip(self.input_names, tensors)))
        if isinstance(outputs, tuple) and not hasattr(outputs, "keys"):
            return outputs
        return tuple(outputs[name] for name in self.output_names)


def export_graph(graph: Graph, folder: Path) -> str:
    """Write ``folder / graph.file``; returns the exporter that made it ("dynamo" or "torchscript")."""
    names = list(graph.inputs)
    unknown = set(graph.dynamic) - set(names)
    if unknown:
        raise ValueError(f"Graph {graph.name!r}: dynamic axes for {sorted(unknown)}, which are not among its inputs "
                         f"{names}.")
    module = _Selected(graph.module, names, graph.outputs).eval()
    args = tuple(graph.inputs.values())
    path = folder / graph.file
    errors = []
    for exporter in [graph.exporter] if graph.exporter else ["dynamo", "torchscript"]:
        try:
            with torch.no_grad(), _quiet(), _attention(graph):
                (_dynamo if exporter == "dynamo" else _torchscript)(module, args, names, graph, path)
            _check_dynamic(path, graph)
            return exporter
        except Exception as error:  # noqa: BLE001 - the next exporter may manage; all failures are reported
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            errors.append(f"{exporter}: {type(error).__name__}: {first}")
            logger.info("Exporting %s with the %s exporter failed: %s", graph.name, exporter, first)
    raise RuntimeError(f"Could not export graph {graph.name!r} of the model to ONNX ({'; '.join(errors)}).")


def _check_dynamic(path: Path, graph: Graph) -> None:
    """An axis meant to vary that the trace fixed (model code that reads a size as a Python number) would make the
    graph refuse other sizes at run time: refused here, so that the next exporter is tried."""
    import onnx

    for node in onnx.load(str(path), load_external_data=False).graph.input:
        dims = node.type.tensor_type.shape.dim
        fixed = [axis for axis in graph.dynamic.get(node.name, {}) if dims[axis].HasField("dim_value")]
        if fixed:
            sizes = [dims[axis].dim_value for axis in fixed]
            raise ValueError(f"the trace fixed axes {fixed} of input {node.name!r} to {sizes}")


def _dynamo(module, args, names, graph: Graph, path: Path) -> None:
    dims: dict[str, torch.export.Dim] = {}
    # One Dim per axis name: axes of one name are one size.
    shapes = tuple({axis: dims.setdefault(dim, torch.export.Dim(dim))
                    for axis, dim in graph.dynamic.get(name, {}).items()} or None for name in names)
    program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=graph.outputs,
                                dynamic_shapes=(shapes,), opset_version=OPSETS["dynamo"], verbose=False,
                                external_data=False)
    program.save(str(path))


def _torchscript(module, args, names, graph: Graph, path: Path) -> None:
    torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, output_names=graph.outputs,
                      dynamic_axes=graph.dynamic, opset_version=OPSETS["torchscript"])


@contextlib.contextmanager
def _attention(graph: Graph):
    """With ``eager_attention``, the transformers model in the graph's module traces its eager attention, then gets
    its own back."""
    model = next((module for module in graph.module.modules() if hasattr(module, "set_attn_implementation")), None)
    set_attention = getattr(model, "set_attn_implementation", None)
    before = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not (graph.eager_attention and set_attention and before and before != "eager"):
        yield
        return
    set_attention("eager")
    try:
        yield
    finally:
        set_attention(before)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress lines and warn about things that are fine here (unused torchvision ops,
    axis names merged): keep them out of the user's output; failures still raise."""
    export_logger = logging.getLogger("torch.onnx")
    level = export_logger.level
    export_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        export_logger.setLevel(level)

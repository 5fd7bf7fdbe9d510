"""int8: ONNX Runtime's dynamic quantization of the weights (``quantize_dynamic``).

The weights of the chosen operator types (``Graph.quantize_ops``: MatMul and the fused Attention by default)
are stored as int8, one scale per output channel; activations are quantized on the fly, per batch, so no
calibration data is needed. Settings, as measured on the MiniLM classifier fine-tuned on movie reviews (AVX2,
no VNNI; see docs/export.md): one scale per channel (``per_channel``) kept 98.8% of the labels of real reviews
where one scale per tensor kept 95-96%; ``reduce_range`` (7-bit weights) guards the int16 sums of CPUs without
VNNI against saturation, at no measured cost in accuracy or speed. What stays fp32, and why:

- embeddings (Gather), LayerNorm, softmax, GELU: no matrix product to speed up, and their errors would reach
  every later layer;
- products of two activations (attention's Q·K and its weighted sum of V): not weights (``MatMulConstBOnly``);
- convolutions: ONNX Runtime's int8 convolution (ConvInteger) runs slower than its fp32 one on CPUs;
- the nodes a task names in ``Graph.keep_fp32``: the classification head, whose errors land on the scores
  directly, for a negligible share of the work.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from taskzoo.export.exporting import Graph

SETTINGS = {"weight_type": "QInt8", "per_channel": True, "reduce_range": True}


def quantize(source: Path, target: Path, graph: Graph, traced: Path | None = None) -> dict:
    """Write the int8 version of ``source`` to ``target``; returns what was done, for taskzoo.json. ``traced``, the
    graph as exported before optimizing, tells which nodes came from the modules in ``keep_fp32`` where the
    optimized graph has lost the dynamo exporter's module scopes (ONNX Runtime keeps node names, not metadata)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def inside(node) -> bool:
        return any(part in _module_path(node) for part in graph.keep_fp32)

    traced_nodes = onnx.load(str(traced), load_external_data=False).graph.node if traced else []
    from_kept_modules = {node.name for node in traced_nodes if inside(node)}
    nodes = onnx.load(str(source), load_external_data=False).graph.node
    kept = [node.name for node in nodes if node.op_type in graph.quantize_ops
            and (inside(node) or node.name in from_kept_modules)]
    with _root_warnings_hidden():  # it advises its pre-processing script on every call: noise for a user
        quantize_dynamic(str(source), str(target), op_types_to_quantize=list(graph.quantize_ops),
                         weight_type=QuantType.QInt8, per_channel=SETTINGS["per_channel"],
                         reduce_range=SETTINGS["reduce_range"], nodes_to_exclude=kept,
                         # Types that shape inference cannot see through ONNX Runtime's fused (contrib) operators
                         # are floats; only weights (constant B) are quantized, never a product of two activations.
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    counts = _count(onnx.load(str(target), load_external_data=False).graph.node)
    return {**SETTINGS, "operators": list(graph.quantize_ops), "kept_fp32": kept, "int8_nodes": counts}


@contextlib.contextmanager
def _root_warnings_hidden():
    """onnxruntime.quantization warns through the root logger, where a user's own warnings go too."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _module_path(node) -> str:
    """Where a node came from: its name (the TorchScript exporter's names are module paths, "/classifier/MatMul")
    and the module scopes the dynamo exporter records in its metadata."""
    scopes = [entry.value for entry in node.metadata_props if entry.key == "pkg.torch.onnx.name_scopes"]
    return " ".join([node.name, *scopes])


def _count(nodes) -> int:
    return sum(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "ConvInteger")
               for node in nodes)

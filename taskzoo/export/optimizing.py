"""Graph optimizations at export time, so that the saved graph is the one that runs (and int8 quantizes it).

Where ``Graph.optimize`` names a transformer family ("bert", "vit", ...), ONNX Runtime's transformer optimizer
(``onnxruntime.transformers.optimizer``) fuses its layers: LayerNorm with the residual add
(SkipLayerNormalization), the bias into GELU (BiasGelu), and, where the graph has the pattern it knows, the
embeddings (EmbedLayerNormalization) and the whole self-attention (Attention). Otherwise ONNX Runtime's own
optimizer runs offline at the extended level (constant folding, redundant nodes removed, GELU and LayerNorm
fused); its remaining, machine-specific level (memory layouts for this CPU's vector width) runs when a session
loads the graph, so the folder stays portable between machines.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from taskzoo.export.exporting import Graph


def optimize(source: Path, target: Path, graph: Graph) -> dict:
    """Write the optimized ``source`` to ``target``; returns what was done, for taskzoo.json."""
    if graph.optimize:
        return _transformer_fusions(source, target, graph)
    return _onnxruntime_offline(source, target)


def _transformer_fusions(source: Path, target: Path, graph: Graph) -> dict:
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer logs each pattern it looked for and did not find: noise for a user.
    optimizer_logger = logging.getLogger("onnxruntime.transformers")
    level = optimizer_logger.level
    optimizer_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = optimize_model(str(source), model_type=graph.optimize, **graph.optimize_options)
    finally:
        optimizer_logger.setLevel(level)
    model.save_model_to_file(str(target))
    fused = {name: count for name, count in model.get_fused_operator_statistics().items() if count}
    return {"by": f"onnxruntime.transformers ({graph.optimize})", "fused": fused}


def _onnxruntime_offline(source: Path, target: Path) -> dict:
    from taskzoo.export.runtime import onnxruntime

    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return {"by": "onnxruntime (extended level)", "fused": {}}


# config.model_type -> the onnxruntime.transformers model type whose fusions fit its layers.
FAMILIES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "distilbert": "bert",
            "electra": "bert", "vit": "vit", "deit": "vit"}


def fusions_for(config) -> dict:
    """``Graph`` settings for the transformer fusions that fit a model of ``config`` ({} where none do)."""
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is None:
        return {}
    # The transformer optimizer recognises attention in the TorchScript exporter's graph of eager attention
    # (see exporting.py), not in the dynamo exporter's graph.
    return {"optimize": family, "optimize_options": {"num_heads": config.num_attention_heads,
                                                     "hidden_size": config.hidden_size},
            "exporter": "torchscript", "eager_attention": True}

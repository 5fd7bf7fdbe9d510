"""Fine-tuning strategies, the same menu on every transformers task:

- ``full``: every parameter trains;
- ``freeze``: the pretrained body is frozen, only the task head trains;
- ``lora``: low-rank adapters (peft) on the body's linear layers, the head trains in full.

The head is what a task adds on top of the pretrained body: for a transformers model, the top-level
modules other than ``base_model_prefix`` (``classifier``, ``decode_head``, ``lm_head``, ...).
"""

from __future__ import annotations

import copy
import re

import torch

# Where base_model_prefix names no child (UperNet has none; CLIP and SigLIP classifiers keep their body as
# vision_model), the body is the children that transformers' conventions name as a pretrained network: a
# backbone (load_backbone: UperNet, DETR-style heads), a vision tower, or an encoder with its embeddings.
BODY_NAMES = ("backbone", "vision_model", "embeddings", "embedder", "encoder")


def head_modules(model: torch.nn.Module) -> list[str]:
    """Names of the model's top-level modules outside its pretrained body."""
    prefix = getattr(model, "base_model_prefix", None)
    # Parameter-free children (a dropout, a pooling) are not part of the head that trains.
    children = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    body = {prefix} if prefix and prefix in children else set(BODY_NAMES) & set(children)
    if "decoder" in children and body == {"encoder"}:
        body = set()  # an encoder-decoder: its decoder is pretrained too, and nothing names the head
    head = [name for name in children if name not in body]
    if not body or not head:
        raise ValueError(f"Cannot tell the head of {type(model).__name__} from its body (its top-level modules: "
                         f"{', '.join(children)}); use strategy='full'.")
    return head


def single_head(model: torch.nn.Module) -> str | None:
    """The head's module name when the head is one module (a classifier): its input can then be cached
    with a frozen body (see feature_cache.py). None otherwise."""
    head = head_modules(model)
    return head[0] if len(head) == 1 else None


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def apply(model: torch.nn.Module, strategy: str, head: list[str], rank: int = 8, alpha: int = 16,
          dropout: float = 0.0) -> torch.nn.Module:
    """Return ``model`` set up for ``strategy`` (``head``: see :func:`head_modules`; unused by "full"). A model
    that already has adapters is merged first."""
    model = without_adapters(model)
    if strategy == "full":
        model.requires_grad_(True)
    elif strategy == "freeze":
        for name, parameter in model.named_parameters():  # head names may be dotted paths to nested modules
            parameter.requires_grad = any(name.startswith(module + ".") for module in head)
    elif strategy == "lora":
        model = _add_lora(model, head, rank, alpha, dropout)
    else:
        raise ValueError(f"Unknown strategy {strategy!r}.")
    return model


def without_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its LoRA adapters, if any, merged into its weights: a plain model again."""
    return model.merge_and_unload() if is_peft(model) else model


def _add_lora(model, head, rank, alpha, dropout):
    try:
        from peft import LoraConfig, get_peft_model
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS
    except ImportError as error:
        raise ImportError("strategy='lora' needs peft: pip install 'taskzoo[training]'") from error
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    # peft knows the attention projections of common architectures; elsewhere adapt every linear layer
    # of the body (the head is excluded: it trains in full through modules_to_save).
    targets = TARGETS.get(model_type) or "all-linear"
    if targets == "all-linear" and not any(isinstance(module, torch.nn.Linear) and not any(
            name == part or name.startswith(part + ".") for part in head) for name, module in model.named_modules()):
        raise ValueError(f"strategy='lora': LoRA adapts linear layers, and the body of {type(model).__name__} "
                         "has none (a convolutional backbone): use strategy 'full' or 'freeze'.")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        exclude_modules=rf"({'|'.join(map(re.escape, head))})(\..*)?" if head else None,
                        modules_to_save=head)
    return get_peft_model(model, config)


def exportable(model: torch.nn.Module, merged: bool = True) -> torch.nn.Module:
    """The model to save: with adapters, a merged copy (a plain model) unless ``merged=False``."""
    if is_peft(model) and merged:
        return copy.deepcopy(model).merge_and_unload()
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def what_trains(model: torch.nn.Module, strategy: str) -> str:
    """The parameters a run trains, in words: "training all 20,964 parameters", "training 23,010 of 53,922
    parameters (the head; the body is frozen)"."""
    trainable, total = count_parameters(model)
    if trainable == total:
        return f"training all {total:,} parameters"
    which = {"freeze": "the head; the body is frozen", "lora": "LoRA adapters and the head"}.get(
        strategy, f"strategy '{strategy}': this task keeps the others frozen")
    return f"training {trainable:,} of {total:,} parameters ({which})"

"""The object-detection part of the testing kit: tiny RT-DETR and DETR models, and toy images of coloured
rectangles with their boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features

TOY_COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 230)}  # the toy data's two kinds of rectangle
TOY_SIDES = (16, 41)  # rectangle sides in pixels (in 64x64 images): large enough for IoU >= 0.5 to be learnable


def tiny_detector(path: Path, family: str = "rt-detr") -> Path:
    if family not in ("rt-detr", "detr"):
        raise ValueError(f"family must be 'rt-detr' or 'detr'; got {family!r}.")
    names = list(TOY_COLOURS)
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)),
                  label2id={name: i for i, name in enumerate(names)})
    torch.manual_seed(0)
    (tiny_rt_detr if family == "rt-detr" else tiny_detr)(path, labels)
    return path


def tiny_rt_detr(path: Path, labels: dict) -> None:
    """RT-DETR: its decoder starts from the encoder's best-scoring positions (query selection) rather than from
    learned queries, so it learns the toy boxes in 150 steps where DETR needs thousands."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessorPil, RTDetrResNetConfig

    # Two feature levels, strides 8 and 16 (8x8 and 4x4 maps at 64 px), where the real model has three: each
    # level adds a stack of conv + batch-norm blocks to the hybrid encoder, and at this size time goes per op, not
    # per pixel: a third level (stride 4) made each training step ~1.45x as slow, for no better boxes.
    backbone = RTDetrResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3"])
    # The real model freezes its pretrained backbone's batch norms; a random backbone must train them.
    # No denoising queries: at this size they cost time and did not speed learning up.
    config = RTDetrConfig(backbone_config=backbone, use_pretrained_backbone=False, freeze_backbone_batch_norms=False,
                          encoder_in_channels=[32, 64], feat_strides=[8, 16], num_feature_levels=2,
                          encode_proj_layers=[1], encoder_hidden_dim=32, encoder_layers=1, encoder_ffn_dim=64,
                          encoder_attention_heads=2, hidden_expansion=0.5, d_model=32, num_queries=8,
                          decoder_in_channels=[32, 32], decoder_ffn_dim=64, decoder_layers=1,
                          decoder_attention_heads=2, decoder_n_points=2, num_denoising=0, **labels)
    model = RTDetrForObjectDetection(config)
    init_for_training_from_scratch(model)
    model.save_pretrained(path)
    RTDetrImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)  # as the real one, at 640


def init_for_training_from_scratch(model) -> None:
    """PyTorch's own init, as the original RT-DETR trains with, and box proposals the size of the toy's rectangles.

    transformers draws every conv and linear weight, and the hybrid encoder's batch-norm scales, from N(0, 0.01):
    harmless for a model about to load its weights, but one trained from scratch starts with its encoder nearly
    silent (each batch norm passes ~1% of its signal, with a random sign) and spends most of its steps waking it
    up: with it, the demo's 150 steps ended at map_50 0.02-0.55 (training seeds 0-2), against 0.77-0.90 (seeds
    0-4, 42) with this init. RT-DETR's own choices stay: the score heads' prior bias, the deformable attention's
    sampling grid, box heads whose last layer starts at zero (their outputs are offsets from the anchors)."""
    from torch import nn

    inner = model.model
    kept = {inner.enc_score_head, *inner.decoder.class_embed}  # prior-probability bias: few objects at first
    kept |= {part for module in model.modules() if hasattr(module, "sampling_offsets")
             for part in (module.sampling_offsets, module.attention_weights)}
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.BatchNorm2d)) and module not in kept:
            module.reset_parameters()
    for head in (inner.enc_bbox_head, *inner.decoder.bbox_embed):
        nn.init.zeros_(head.layers[-1].weight)
        nn.init.zeros_(head.layers[-1].bias)
    # The anchors are 0.05 and 0.1 of the image wide on the two levels: the real model's, made for small objects
    # in 640-px photos. The toy's rectangles are 0.25 to 0.63 of the image: a bias of 2 on the width and height
    # logits starts the proposals at 0.28 and 0.45, and the steps go to placing the boxes, not to growing them
    # (without it the demo's run ended at map_50 0.61-0.70 over seeds 0-2; with it, 0.84-0.90).
    with torch.no_grad():
        inner.enc_bbox_head.layers[-1].bias[2:] = 2.0


def tiny_detr(path: Path, labels: dict) -> None:
    """The original DETR (HF ResNet backbone); its processor keeps the aspect ratio and pads batches."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessorPil, ResNetConfig

    backbone = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                            layer_type="basic", out_features=["stage2"])  # stride 8: 8x8 features at 64 px
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                        num_queries=8, d_model=64, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=128,
                        decoder_ffn_dim=128, encoder_attention_heads=2, decoder_attention_heads=2, dropout=0.0,
                        **labels)
    DetrForObjectDetection(config).save_pretrained(path)
    DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)


def toy_rectangles(n: int, seed: int, features: Features) -> Dataset:
    """``n`` 64x64 noisy grey images with one or two filled rectangles, red or blue, at random places and
    sizes; rectangles keep 2 px apart, so that every box can be told from the picture."""
    from PIL import Image, ImageDraw

    rng, names = np.random.default_rng(seed), list(TOY_COLOURS)
    images, objects = [], []
    for _ in range(n):
        image = Image.fromarray(np.clip(rng.integers(90, 150) + rng.normal(0, 10, (64, 64, 3)), 0, 255)
                                .astype(np.uint8))
        draw, item = ImageDraw.Draw(image), {"bbox": [], "category": []}
        for _ in range(rng.integers(1, 3)):
            for _attempt in range(20):  # a place clear of the rectangles drawn already
                kind, width, height = int(rng.integers(2)), *(int(side) for side in rng.integers(*TOY_SIDES, 2))
                x, y = int(rng.integers(0, 64 - width)), int(rng.integers(0, 64 - height))
                if not any(x < bx + bw + 2 and bx < x + width + 2 and y < by + bh + 2 and by < y + height + 2
                           for bx, by, bw, bh in item["bbox"]):
                    break
            else:
                continue
            draw.rectangle((x, y, x + width - 1, y + height - 1), fill=TOY_COLOURS[names[kind]])  # w x h px
            item["bbox"].append([x, y, width, height])
            item["category"].append(kind)
        images.append(image)
        objects.append(item)
    return Dataset.from_dict({"image": images, "objects": objects}, features=features)

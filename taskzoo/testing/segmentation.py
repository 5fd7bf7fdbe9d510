"""The image-segmentation part of the testing kit: tiny random SegFormer, Mask2Former, MaskFormer and OneFormer
(nothing pretrained, no timm) with their PIL image processors. The toy data lives in
taskzoo/tasks/image_segmentation.py."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("segformer", "mask2former", "maskformer", "oneformer")


def tiny_segmenter(path: Path, family: str, labels: list[str]) -> Path:
    """A tiny random segmenter of ``family`` for ``labels`` (64 px images), saved at ``path``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(map(repr, FAMILIES))}; got {family!r}.")
    return tiny_segformer(path, labels) if family == "segformer" else tiny_universal(path, family, labels)


def tiny_segformer(path: Path, labels: list[str]) -> Path:
    """SegFormer: 2 stages, hidden 16/32; its processor resizes to 64x64."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, classifier_dropout_prob=0.0, drop_path_rate=0.0,
                             num_labels=len(labels), id2label=dict(enumerate(labels)),
                             label2id={label: i for i, label in enumerate(labels)})
    SegformerForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessorPil(size={"height": 64, "width": 64}, do_reduce_labels=False).save_pretrained(path)
    return Path(path)


def tiny_swin():
    """A Swin backbone with four stages of one block (strides 4 to 32: 16x16 to 2x2 maps at 64 px)."""
    from transformers import SwinConfig

    return SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])


def tiny_universal(path: Path, family: str, labels: list[str]) -> Path:
    """A universal-segmentation model: Mask2Former or OneFormer on a tiny Swin, MaskFormer on a tiny ResNet
    (the two backbones its checkpoints use), with a processor that keeps the aspect ratio (shortest edge 64 px,
    longest 128 px, sides a multiple of 32) and pads batches, as the real ones do at 384 to 1024 px."""
    import transformers

    names = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                 label2id={label: i for i, label in enumerate(labels)})
    # 8 queries for 4 classes; 1024 points per mask in the loss (the real models sample 12544 of larger images).
    queries, points = 8, dict(train_num_points=1024)
    torch.manual_seed(0)
    if family == "mask2former":
        config = transformers.Mask2FormerConfig(
            backbone_config=tiny_swin(), feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_layers=1,
            encoder_feedforward_dim=64, decoder_layers=2, num_attention_heads=2, dim_feedforward=64,
            num_queries=queries, **points, **names)
        model = transformers.Mask2FormerForUniversalSegmentation(config)
        processor = transformers.Mask2FormerImageProcessorPil
    elif family == "maskformer":
        decoder = transformers.DetrConfig(d_model=32, decoder_layers=1, decoder_ffn_dim=64, decoder_attention_heads=2,
                                          encoder_layers=1, encoder_ffn_dim=64, encoder_attention_heads=2,
                                          num_queries=queries, dropout=0.0)
        backbone = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                             layer_type="basic", out_features=["stage1", "stage2", "stage3", "stage4"])
        config = transformers.MaskFormerConfig(backbone_config=backbone, decoder_config=decoder,
                                               fpn_feature_size=32, mask_feature_size=32, **names)
        model = transformers.MaskFormerForInstanceSegmentation(config)
        processor = transformers.MaskFormerImageProcessorPil
    else:
        from taskzoo.testing import clip_tokenizer

        config = transformers.OneFormerConfig(
            backbone_config=tiny_swin(), conv_dim=32, mask_dim=32, hidden_dim=32, encoder_feedforward_dim=64,
            encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64, dropout=0.0,
            num_queries=queries, task_seq_len=8, is_training=False, **points, **names)
        model = transformers.OneFormerForUniversalSegmentation(config)
        processor = transformers.OneFormerImageProcessorPil
        clip_tokenizer(["the", "task", "is", "semantic", "instance", "panoptic"]).save_pretrained(path)
    model.save_pretrained(path)
    processor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=32, ignore_index=255,
              do_reduce_labels=False).save_pretrained(path)
    return Path(path)

"""More architecture families for the testing kit, laid out as their hub checkpoints are: BEiT (image
classification and segmentation: relative position bias, cached position index), UperNet with a ConvNeXt
backbone (segmentation: no base_model_prefix, a ``backbone`` child) and FSMT (translation: fairseq's
separate source and target vocabularies, decoder inputs made from the source when none are given).

Each builder saves a tiny random model for the task's toy data (its labels, its words) at ``path``, with the
processor or tokenizer its hub checkpoints use (PIL image processors: no torchvision); :mod:`taskzoo.testing.kit`
lists them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _label_config(names: list[str]) -> dict:
    return dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


def _beit_processor(size: int):
    """As microsoft/beit-* checkpoints: a plain resize, mean and std 0.5; no label reduction (the task reduces)."""
    from transformers import BeitImageProcessorPil

    return BeitImageProcessorPil(size={"height": size, "width": size}, do_center_crop=False, image_mean=[0.5] * 3,
                                 image_std=[0.5] * 3, do_reduce_labels=False)


# Sizes as transformers' BEiT model tests; relative position bias on, as in the fine-tuned hub checkpoints.
_TINY_BEIT = dict(hidden_size=32, num_attention_heads=4, intermediate_size=37, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, drop_path_rate=0.0, use_relative_position_bias=True,
                  use_absolute_position_embeddings=False)


def beit_classifier(path: Path) -> Path:
    """BEiT image classifier (mean pooling, as microsoft/beit-base-patch16-224) for the 32 px toy shapes."""
    from transformers import BeitConfig, BeitForImageClassification

    from taskzoo.tasks.image_classification import ImageClassification

    torch.manual_seed(0)
    config = BeitConfig(image_size=32, patch_size=4, num_hidden_layers=2, use_mean_pooling=True, **_TINY_BEIT,
                        **_label_config(list(ImageClassification.SHAPES)))
    BeitForImageClassification(config).save_pretrained(path)
    _beit_processor(32).save_pretrained(path)
    return Path(path)


def beit_segmenter(path: Path) -> Path:
    """BEiT semantic segmentation (UperNet-style decode head over four encoder layers, auxiliary FCN head)
    for the 64 px toy shapes."""
    from transformers import BeitConfig, BeitForSemanticSegmentation

    from taskzoo.tasks.image_segmentation import ImageSegmentation

    torch.manual_seed(0)
    config = BeitConfig(image_size=64, patch_size=16, num_hidden_layers=4, out_indices=[1, 2, 3, 4],
                        pool_scales=[1, 2, 3, 6], auxiliary_channels=16, semantic_loss_ignore_index=255,
                        **_TINY_BEIT, **_label_config(["background", *ImageSegmentation.SHAPES]))
    BeitForSemanticSegmentation(config).save_pretrained(path)
    _beit_processor(64).save_pretrained(path)
    return Path(path)


def upernet_convnext(path: Path) -> Path:
    """UperNet over a ConvNeXt backbone (as openmmlab/upernet-convnext-*: four stages, an auxiliary head on the
    third, SegformerImageProcessor) for the 64 px toy shapes."""
    from transformers import ConvNextConfig, SegformerImageProcessorPil, UperNetConfig, UperNetForSemanticSegmentation

    from taskzoo.tasks.image_segmentation import ImageSegmentation

    torch.manual_seed(0)
    backbone = ConvNextConfig(num_stages=4, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0)
    config = UperNetConfig(backbone_config=backbone, hidden_size=32, pool_scales=[1, 2, 3, 6],
                           auxiliary_in_channels=24, auxiliary_channels=16, loss_ignore_index=255,
                           **_label_config(["background", *ImageSegmentation.SHAPES]))
    UperNetForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessorPil(size={"height": 64, "width": 64}, do_reduce_labels=False).save_pretrained(path)
    return Path(path)


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """``word``'s BPE pieces by FSMT's rule (the best-ranked adjacent pair merges everywhere, until none is
    ranked), and every symbol made on the way."""
    pieces, made = [*word[:-1], word[-1] + "</w>"], []
    while len(pieces) > 1:
        pair = min(zip(pieces, pieces[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(pieces):
            if tuple(pieces[i:i + 2]) == pair:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
        made.append(pair[0] + pair[1])
    return pieces, made


def _bpe_merges(words: list[str]) -> dict[tuple[str, str], int]:
    """Merges (pair -> rank) under which each of ``words`` is one piece: where a word still splits under the
    merges so far, its first two pieces' merge is added, last in rank (so words already whole stay whole)."""
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(pieces := _bpe(word, ranks)[0]) > 1:
            ranks[pieces[0], pieces[1]] = len(ranks)
    return ranks


def _fairseq_vocab(words: list[str], ranks: dict[tuple[str, str], int]) -> dict[str, int]:
    """A fairseq dictionary (its four specials first, as FSMT's): single letters that spell any word, then
    each of ``words`` and the pieces it is merged from."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *letters, *(c + "</w>" for c in letters)]
    for word in words:
        tokens += _bpe(word, ranks)[1]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def fsmt_translator(path: Path) -> Path:
    """FSMT (fairseq WMT19) with separate source and target vocabularies, as facebook/wmt19-en-ru has, over the
    toy English words and their toy translations; Moses + BPE tokenizer (needs sacremoses, as the real one)."""
    from transformers import FSMTConfig, FSMTForConditionalGeneration, FSMTTokenizer, GenerationConfig

    from taskzoo.tasks.translation import Translation

    lexicon = {word: translated for words in Translation.TOY.values() for word, translated in words.items()}
    ranks = _bpe_merges([*lexicon, *lexicon.values()])  # one merges file serves both languages
    source, target = _fairseq_vocab(list(lexicon), ranks), _fairseq_vocab(list(lexicon.values()), ranks)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    files = {"src_vocab_file": path / "vocab-src.json", "tgt_vocab_file": path / "vocab-tgt.json",
             "merges_file": path / "merges.txt"}
    files["src_vocab_file"].write_text(json.dumps(source))
    files["tgt_vocab_file"].write_text(json.dumps(target))
    files["merges_file"].write_text("".join(f"{a} {b}\n" for a, b in ranks))
    tokenizer = FSMTTokenizer(langs=["en", "xx"], **{key: str(file) for key, file in files.items()},
                              model_max_length=64)
    torch.manual_seed(0)
    # Scaled embeddings and a larger initial spread, as the Marian kit, so that the toy data learns fast.
    config = FSMTConfig(langs=["en", "xx"], src_vocab_size=len(source), tgt_vocab_size=len(target), d_model=32,
                        encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
                        init_std=0.1, num_beams=1, max_length=24)
    model = FSMTForConditionalGeneration(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=2, bos_token_id=0, eos_token_id=2,
                                               pad_token_id=1, forced_eos_token_id=2, max_length=24, num_beams=1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


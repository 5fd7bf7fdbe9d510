"""Behaviour particular to some architecture families of the testing kit (tests/test_contract.py runs the task
contract over all of them): UperNet's body named "backbone", FSMT's separate target vocabulary, ModernBERT,
RT-DETR's nested heads."""

import pytest
import torch

import taskzoo
from taskzoo.testing import toy_dataset

# ------------------------------------------------------------------- UperNet: a body named "backbone"
SEGMENTATION = "image-segmentation"


def test_upernet_learns_with_the_default_strategy(tiny_model_path):
    zoo = taskzoo.load(SEGMENTATION, model=tiny_model_path(SEGMENTATION, "upernet"), device="cpu")
    held_out = toy_dataset(SEGMENTATION, 32, seed=1)
    before = zoo.evaluate(held_out)["mean_iou"]
    zoo.finetune(toy_dataset(SEGMENTATION, 128, seed=0), epochs=4, learning_rate=5e-3, batch_size=16, progress=False,
                 save_checkpoints=False, plot=False)  # strategy="full", the default
    after = zoo.evaluate(held_out)["mean_iou"]
    assert after > 0.25 and after > 3 * before


def test_upernet_freeze_and_lora_tell_the_backbone_from_the_heads(tiny_model_path):
    from taskzoo.strategies import count_parameters, is_peft

    zoo = taskzoo.load(SEGMENTATION, model=tiny_model_path(SEGMENTATION, "upernet"), device="cpu")
    assert zoo.head_modules() == ["decode_head", "auxiliary_head"]
    data = toy_dataset(SEGMENTATION, 8)
    backbone = {k: v.clone() for k, v in zoo.model.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in zoo.model.decode_head.state_dict().items()}
    run = dict(max_steps=2, batch_size=4, learning_rate=1e-2, progress=False, save_checkpoints=False, plot=False)
    zoo.finetune(data, strategy="freeze", **run)
    assert count_parameters(zoo.model)[0] == sum(p.numel() for name in ("decode_head", "auxiliary_head")
                                                 for p in zoo.model.get_submodule(name).parameters())
    assert all(torch.equal(v, backbone[k]) for k, v in zoo.model.backbone.state_dict().items())
    assert any(not torch.equal(v, heads[k]) for k, v in zoo.model.decode_head.state_dict().items())

    zoo.finetune(data, strategy="lora", **run)
    assert is_peft(zoo.model)
    adapted = [name for name, p in zoo.model.named_parameters() if "lora_" in name and p.requires_grad]
    assert adapted and all(".backbone." in name for name in adapted)
    zoo.finetune(data, **run)  # full again: the adapters are merged first
    assert not is_peft(zoo.model) and count_parameters(zoo.model)[0] == count_parameters(zoo.model)[1]


def test_upernet_new_label_set_save_and_reload(tiny_model_path, tmp_path):
    from PIL import Image
    from transformers import UperNetForSemanticSegmentation

    zoo = taskzoo.load(SEGMENTATION, model=tiny_model_path(SEGMENTATION, "upernet"), device="cpu")
    names = ["ground", "square", "circle", "triangle", "star"]
    zoo.finetune(toy_dataset(SEGMENTATION, 8), labels=names, max_steps=2, batch_size=4, progress=False,
                 save_checkpoints=False, plot=False)
    assert zoo.labels == names
    assert zoo.model.decode_head.classifier.out_channels == zoo.model.auxiliary_head.classifier.out_channels == 5
    image = Image.new("RGB", (80, 48), (40, 200, 40))  # not the model's size: masks come back at this size
    segments = zoo.predict(image)
    assert all(segment["mask"].size == (80, 48) and segment["label"] in names for segment in segments)
    assert 0 <= zoo.evaluate(toy_dataset(SEGMENTATION, 8, seed=1))["mean_iou"] <= 1
    zoo.save(tmp_path / "saved")
    again = taskzoo.load(SEGMENTATION, model=tmp_path / "saved", device="cpu")
    assert (again.predict(image, return_label_map=True) == zoo.predict(image, return_label_map=True)).all()
    assert UperNetForSemanticSegmentation.from_pretrained(tmp_path / "saved").config.id2label[4] == "star"


# ------------------------------------------------- FSMT: decoder inputs from the labels, a target vocabulary
TRANSLATION = "translation"


def test_fsmt_labels_are_numbered_in_the_target_vocabulary(tiny_model_path):
    zoo = taskzoo.load(TRANSLATION, model=tiny_model_path(TRANSLATION, "fsmt"), device="cpu")
    tokenizer = zoo.processor
    batch = zoo.collate([{"source": "the cat", "target": "le chat rouge"}, {"source": "a dog", "target": "un"}])
    # convert_ids_to_tokens reads the target vocabulary: the labels spell the targets, then the end token.
    assert tokenizer.convert_ids_to_tokens(batch["labels"][0]) == ["le</w>", "chat</w>", "rouge</w>", "</s>"]
    assert batch["labels"][1].tolist()[2:] == [-100, -100]
    # The decoder reads the labels shifted right behind the end token (fairseq's start), padding for -100.
    un, pad = batch["labels"][1, 0].item(), tokenizer.pad_token_id
    assert batch["decoder_input_ids"].tolist() == [[2, *batch["labels"][0].tolist()[:-1]], [2, un, 2, pad]]


def test_fsmt_learns_and_saves_for_plain_transformers(tiny_model_path, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    zoo = taskzoo.load(TRANSLATION, model=tiny_model_path(TRANSLATION, "fsmt"), device="cpu")
    held_out = toy_dataset(TRANSLATION, 64, seed=1)
    assert zoo.evaluate(held_out)["bleu"] < 5
    zoo.finetune(toy_dataset(TRANSLATION, 1024, seed=0), epochs=3, learning_rate=1e-2, batch_size=32, progress=False,
                 save_checkpoints=False, plot=False)
    assert zoo.evaluate(held_out)["bleu"] >= 50
    texts = ["the red cat sees a dog", "a bird eats the green tree"]
    outputs = zoo.predict(texts)
    assert outputs[0] == {"translation_text": "le chat rouge voit un chien"}
    zoo.save(tmp_path / "saved")
    assert taskzoo.load(TRANSLATION, model=tmp_path / "saved", device="cpu").predict(texts) == outputs
    model, tokenizer = (auto.from_pretrained(tmp_path / "saved") for auto in (AutoModelForSeq2SeqLM, AutoTokenizer))
    generated = model.generate(**tokenizer(texts, return_tensors="pt", padding=True), num_beams=1)
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == [o["translation_text"] for o in outputs]


def test_an_unknown_family_is_refused_naming_the_known_ones(tmp_path):
    from taskzoo.testing import tiny_model

    with pytest.raises(ValueError, match=r"translation has no tiny model of family 'beit'.*\['marian', 'fsmt', 't5'\]"):
        tiny_model("translation", tmp_path, family="beit")


# ------------------------------------------------ ModernBERT: no token type ids, local and global attention
def test_modernbert_classifier_learns_and_saves_for_plain_transformers(tiny_model_path, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = "text-classification"
    zoo = taskzoo.load(task, model=tiny_model_path(task, "modernbert"), device="cpu")
    assert "token_type_ids" not in zoo.processor("good film")
    held_out = toy_dataset(task, 64, seed=1)
    zoo.finetune(toy_dataset(task, 256, seed=0), epochs=3, learning_rate=3e-3, batch_size=16, progress=False,
                 save_checkpoints=False, plot=False)
    assert zoo.evaluate(held_out)["accuracy"] >= 0.9
    zoo.save(tmp_path / "saved")
    model, tokenizer = (auto.from_pretrained(tmp_path / "saved") for auto in
                        (AutoModelForSequenceClassification, AutoTokenizer))
    with torch.no_grad():
        logits = model(**tokenizer(["a superb story", "an awful plot"], return_tensors="pt", padding=True)).logits
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == ["positive", "negative"]


# ------------------------------------------------- RT-DETR: prediction heads nested inside the model
def test_rt_detr_freeze_trains_its_nested_heads_only(tiny_model_path):
    zoo = taskzoo.load("object-detection", model=tiny_model_path("object-detection"), device="cpu")
    heads = zoo.head_modules()
    assert {"model.enc_score_head", "model.decoder.class_embed.0", "model.decoder.bbox_embed.0"} <= set(heads)
    start = {name: p.clone() for name, p in zoo.model.named_parameters()}
    zoo.finetune(toy_dataset("object-detection", 4), strategy="freeze", max_steps=1, batch_size=4,
                 learning_rate=1e-2, progress=False, save_checkpoints=False, plot=False)
    changed = {name for name, p in zoo.model.named_parameters() if not torch.equal(p, start[name])}
    in_head = {name for name in start if any(name.startswith(head + ".") for head in heads)}
    assert changed and changed <= in_head and {n for n in start if "decoder.class_embed" in n} <= changed


# ---------------------------------------------------- T5: the task prefix from its config, a Unigram tokenizer
def test_t5_translates_behind_its_config_prefix_and_learns(tiny_model_path):
    path = tiny_model_path(TRANSLATION, "t5")
    with pytest.raises(ValueError, match=r"behind a task prefix: pass src_lang= and tgt_lang=.*\['en->xx'\]"):
        taskzoo.load(TRANSLATION, model=path, device="cpu").predict("the cat")
    zoo = taskzoo.load(TRANSLATION, model=path, device="cpu", src_lang="en", tgt_lang="xx")
    assert zoo.prefix == "translate English to Toy: "
    held_out = toy_dataset(TRANSLATION, 64, seed=1)
    assert zoo.evaluate(held_out)["bleu"] < 5
    zoo.finetune(toy_dataset(TRANSLATION, 1024, seed=0), epochs=3, learning_rate=1e-2, batch_size=32, progress=False,
                 save_checkpoints=False, plot=False)
    assert zoo.evaluate(held_out)["bleu"] >= 30

import json

import pytest
import torch

import taskzoo
from taskzoo.errors import DataError
from taskzoo.testing import toy_dataset

TEXTS = ["the red cat sees a dog", "a bird eats the green tree", "the man likes a car",
         "a happy child finds the blue house", "the dog sees the cat"]
EXPECTED = ["le chat rouge voit un chien", "un oiseau mange le arbre vert", "le homme aime un auto",
            "un enfant heureux trouve le maison bleu", "le chien voit le chat"]


def test_finetuning_lifts_bleu_from_near_zero_to_at_least_50(trained_translator):
    zoo, before, result, held_out = trained_translator
    assert before["bleu"] < 5
    after = zoo.evaluate(held_out)
    assert set(after) == {"bleu", "chrf"}
    assert after["bleu"] >= 50 and after["chrf"] > before["chrf"]
    assert result.metric == "bleu" and result.best_metric >= 50


def test_batched_length_sorted_predict_equals_one_at_a_time_in_input_order(trained_translator):
    zoo = trained_translator[0]
    batched = zoo.predict(TEXTS, batch_size=2)
    assert batched == [zoo.predict(text) for text in TEXTS]
    assert [output["translation_text"] for output in batched] == EXPECTED  # learnt the reordering rule
    assert zoo.predict(TEXTS[:2], num_beams=3, max_new_tokens=20) == batched[:2]
    assert len(zoo.predict("the cat sees the dog", max_new_tokens=2)["translation_text"].split()) <= 2


def test_save_load_round_trip_and_plain_transformers(trained_translator, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    zoo = trained_translator[0]
    zoo.save(tmp_path / "saved")
    again = taskzoo.load("translation", model=tmp_path / "saved", device="cpu")
    assert again.predict(TEXTS) == zoo.predict(TEXTS)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "saved")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved")
    output = model.generate(**tokenizer(TEXTS[:1], return_tensors="pt"))
    assert tokenizer.batch_decode(output, skip_special_tokens=True) == EXPECTED[:1]


def test_labels_ignore_padding_and_keep_the_references(tiny_model_path):
    zoo = taskzoo.load("translation", model=tiny_model_path("translation"), device="cpu")
    rows = [{"source": "the cat", "target": "le chat rouge"}, {"source": "a dog", "target": "un"}]
    batch = zoo.collate(rows)
    eos = zoo.processor.eos_token_id
    assert batch["labels"].tolist()[1] == [zoo.processor.convert_tokens_to_ids("un"), eos, -100, -100]
    assert batch["references"] == ["le chat rouge", "un"]
    # The loss of the short row is the same alone as padded in a batch: padding adds nothing to it.
    alone = zoo.training_step(zoo.model, zoo.collate(rows[1:]))["loss"]
    per_token = torch.nn.functional.cross_entropy(
        zoo.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).logits[1],
        batch["labels"][1], ignore_index=-100)
    assert per_token.item() == pytest.approx(alone.item(), abs=1e-5)


def test_wmt_style_translation_dicts(tiny_model_path):
    path = tiny_model_path("translation")
    rows = toy_dataset("translation", 8, seed=2)
    wmt = [{"translation": {"en": row["source"], "xx": row["target"], "fr": "-"}} for row in rows]
    zoo = taskzoo.load("translation", model=path, device="cpu", source_key="en", target_key="xx")
    assert zoo.evaluate(wmt) == zoo.evaluate(rows)
    assert zoo.input_of(wmt[0]) == rows[0]["source"]
    plain = taskzoo.load("translation", model=path, device="cpu")
    with pytest.raises(DataError, match=r"languages \['en', 'xx', 'fr'\].*source_key"):
        plain.evaluate(wmt)
    with pytest.raises(DataError, match="no 'de' texts .target language"):
        taskzoo.load("translation", model=path, device="cpu", src_lang="en", tgt_lang="de").evaluate(wmt)
    # finetune options choose the languages too (the one-call API and the CLI have no load options)
    plain.finetune(wmt, max_steps=1, source_key="en", target_key="xx", progress=False, save_checkpoints=False)


def test_the_old_names_source_lang_and_target_lang_work_with_a_warning(tiny_model_path, tmp_path):
    from taskzoo.errors import TaskzooWarning

    path = tiny_model_path("translation")
    rows = toy_dataset("translation", 4, seed=2)
    wmt = [{"translation": {"en": row["source"], "xx": row["target"]}} for row in rows]
    with pytest.warns(TaskzooWarning, match=r"load\(\): source_lang= is renamed source_key="):
        zoo = taskzoo.load("translation", model=path, device="cpu", source_lang="en", target_lang="xx")
    assert (zoo.source_key, zoo.target_key) == ("en", "xx") and zoo.evaluate(wmt) == zoo.evaluate(rows)
    plain = taskzoo.load("translation", model=path, device="cpu")
    with pytest.warns(TaskzooWarning, match=r"finetune\(\): target_lang= is renamed target_key="):
        plain.finetune(wmt, max_steps=1, source_lang="en", target_lang="xx", progress=False, save_checkpoints=False)
    with pytest.raises(TypeError, match="both source_lang= and source_key="):
        taskzoo.load("translation", model=path, device="cpu", source_lang="en", source_key="en")
    # A folder saved before the rename keeps its keys under the old names.
    saved = zoo.save(tmp_path / "old")
    settings = json.loads((saved / "taskzoo.json").read_text())
    settings["source_lang"], settings["target_lang"] = settings.pop("source_key"), settings.pop("target_key")
    (saved / "taskzoo.json").write_text(json.dumps(settings))
    again = taskzoo.load("translation", model=saved, device="cpu")
    assert (again.source_key, again.target_key) == ("en", "xx")


def test_bad_rows_are_named(tiny_model_path):
    zoo = taskzoo.load("translation", model=tiny_model_path("translation"), device="cpu")
    with pytest.raises(DataError, match="Column 'target' has no text in row 1"):
        zoo.evaluate([{"source": "a cat", "target": "un chat"}, {"source": "a dog", "target": None}])
    with pytest.raises(DataError, match="Column 'source' must hold texts"):
        zoo.evaluate([{"source": 1, "target": "un"}])
    with pytest.raises(DataError, match="no column 'target'"):
        zoo.evaluate([{"source": "a cat"}])
    with pytest.raises(ValueError, match="translation takes texts"):
        zoo.predict(["a cat", 3])


def test_strategies_lora_trains_and_saves_a_plain_model_and_freeze_is_refused(tiny_model_path, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    zoo = taskzoo.load("translation", model=tiny_model_path("translation"), device="cpu")
    with pytest.raises(ValueError, match="'full' or 'lora'"):
        zoo.finetune(toy_dataset("translation", 8), strategy="freeze", max_steps=1, progress=False)
    zoo.finetune(toy_dataset("translation", 16), eval=toy_dataset("translation", 8, seed=1), strategy="lora",
                 max_steps=2, progress=False, save_checkpoints=False, plot=False)
    assert isinstance(zoo.predict("the cat")["translation_text"], str)
    zoo.save(tmp_path / "merged")
    assert type(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")).__name__ == "MarianMTModel"


@pytest.fixture(scope="module")
def tiny_nllb(tmp_path_factory):
    """A tiny NLLB-style model (M2M100 architecture, NllbTokenizer with its language codes), offline."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    path = tmp_path_factory.mktemp("nllb")
    tokenizer = NllbTokenizer(src_lang="eng_Latn")
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                          decoder_start_token_id=tokenizer.eos_token_id)
    M2M100ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def recording_generate(zoo) -> list[tuple[dict, torch.Tensor]]:
    """Record what taskzoo's predict passes to the model's generate() and what it returns."""
    calls, real = [], zoo.model.generate

    def generate(**kwargs):
        calls.append((kwargs, real(**kwargs)))
        return calls[-1][1]

    zoo.model.generate = generate
    return calls


@pytest.mark.filterwarnings("ignore:translation. .* stopped at the length limit")  # short outputs on purpose
def test_multilingual_language_codes_force_the_target_language(tiny_nllb, tmp_path):
    with pytest.raises(ValueError, match="'fr' is not a language code.*ace_Arab"):
        taskzoo.load("translation", model=tiny_nllb, device="cpu", tgt_lang="fr")
    # Without a target language it loads (the CLI and taskzoo.run give languages to predict) but does not translate.
    undecided = taskzoo.load("translation", model=tiny_nllb, device="cpu")
    with pytest.raises(ValueError, match="multilingual: pass tgt_lang="):
        undecided.predict("hallo")
    with pytest.raises(ValueError, match="multilingual: pass tgt_lang="):
        undecided.evaluate([{"source": "hallo", "target": "salut"}])
    tokenizer = undecided.processor
    english, french, spanish, german = tokenizer.convert_tokens_to_ids(["eng_Latn", "fra_Latn", "spa_Latn",
                                                                        "deu_Latn"])
    calls = recording_generate(undecided)
    assert isinstance(undecided.predict("hallo", tgt_lang="fra_Latn", max_new_tokens=1)["translation_text"], str)
    (options, output), = calls
    # The per-call target language reaches generate and starts the output; the source code starts the input.
    assert options["forced_bos_token_id"] == french and output[0, 1].item() == french
    assert options["input_ids"][0, 0].item() == english  # the tokenizer's own source language

    zoo = taskzoo.load("translation", model=tiny_nllb, device="cpu", src_lang="deu_Latn", tgt_lang="fra_Latn")
    assert zoo.forced_bos_token_id == french
    inputs = zoo.collate([{"source": "hallo", "target": "salut"}])
    assert inputs["input_ids"][0, 0] == german
    assert inputs["labels"][0, 0] == french
    # Saved in the generation config, so that plain transformers' generate() starts in the target language too.
    encoded = zoo.processor(["hallo"], return_tensors="pt")
    assert zoo.model.generate(**encoded, max_new_tokens=2)[0, 1].item() == french

    calls = recording_generate(zoo)
    assert "fra_Latn" not in zoo.predict("hallo", max_new_tokens=3)["translation_text"]  # a prompt, not text
    assert calls[-1][1][0, 1].item() == french
    zoo.predict("hallo", tgt_lang="spa_Latn", max_new_tokens=2)  # another target for this call only
    assert calls[-1][0]["forced_bos_token_id"] == spanish and calls[-1][1][0, 1].item() == spanish
    zoo.predict("hello", src_lang="eng_Latn", max_new_tokens=1)  # another source for this call only
    assert calls[-1][0]["input_ids"][0, 0].item() == english and calls[-1][1][0, 1].item() == french
    assert zoo.processor.src_lang == "deu_Latn"  # the per-call src_lang does not stick
    zoo.predict("hallo", max_new_tokens=1)
    assert calls[-1][0]["input_ids"][0, 0].item() == german and calls[-1][1][0, 1].item() == french
    zoo.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "taskzoo.json").read_text())["tgt_lang"] == "fra_Latn"
    again = taskzoo.load("translation", model=tmp_path / "saved", device="cpu")
    assert (again.src_lang, again.tgt_lang, again.forced_bos_token_id) == ("deu_Latn", "fra_Latn", french)


@pytest.mark.filterwarnings("ignore:translation. .* stopped at the length limit")
def test_t5_style_prefix_comes_from_the_languages(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    # A word-level tokenizer that knows the prefixes' words, so that the ids show which prefix was used.
    words = ["<pad>", "</s>", "<unk>", *"translate English to German French summarize : hello".split()]
    backend = Tokenizer(models.WordLevel(vocab={word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>")
    config = T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    config.task_specific_params = {"translation_en_to_de": {"prefix": "translate English to German: "},
                                   "translation_en_to_fr": {"prefix": "translate English to French: "}}
    T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"task prefix.*\['en->de', 'en->fr'\]"):
        taskzoo.load("translation", model=tmp_path, device="cpu").predict("hello")
    zoo = taskzoo.load("translation", model=tmp_path, device="cpu", src_lang="en", tgt_lang="fr")
    assert zoo.prefix == "translate English to French: "
    assert taskzoo.load("translation", model=tmp_path, device="cpu", prefix="").prefix == ""
    calls = recording_generate(zoo)

    def given(text: str) -> bool:  # whether the model's encoder got this text in the latest call
        return calls[-1][0]["input_ids"][0].tolist() == tokenizer(text).input_ids

    zoo.predict("hello", max_new_tokens=1)
    assert given("translate English to French: hello")
    zoo.predict("hello", tgt_lang="de", max_new_tokens=1)  # the per-call language picks its own prefix
    assert given("translate English to German: hello")
    zoo.predict("hello", prefix="summarize: ", max_new_tokens=1)
    assert given("summarize: hello")
    zoo.predict("hello", max_new_tokens=1)  # and none of them sticks
    assert given("translate English to French: hello")

"""Benchmark: encoder-decoders exported to ONNX Runtime (fp32, int8) against taskzoo's torch fp32 predict.

Two models built from real configs with seeded random weights (the hub is out of reach here; weights do not
change the speed): a Marian translator of opus-mt-en-de's size (6+6 layers, d_model 512, a 58101-token vocabulary)
and Whisper of whisper-tiny's (4+4 layers, d_model 384, 51865 tokens) or whisper-base's size. Each side predicts
the same inputs at the same batch size: mixed-length sentences for Marian, espeak-ng clips of 1 to 12 s for Whisper.

Equal work: random weights would stop at random lengths, so the end token is suppressed (Marian: a minimum of
``--new-tokens`` new tokens, Whisper: the end and timestamp tokens in ``suppress_tokens``) and every output runs to
exactly ``--new-tokens`` tokens on every side. Greedy decoding, and with ``--beams N`` beam search too. Agreement:
the share of outputs identical to torch's (fp32 should be 100%; int8's is a property of these random weights, not
of a trained model: see tests/test_export_seq2seq.py for a trained one).

Times: medians of ``--rounds`` rounds in rotating order, wall and CPU seconds (on a busy machine, compare CPU
seconds), after one untimed warm-up per side.

    python bench/export_seq2seq_speed.py [--models marian whisper] [--whisper-size tiny|base] [--batch-size 8]
        [--inputs 32] [--new-tokens 32] [--beams 4] [--rounds 3]
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import taskzoo
from common import WHISPER_SIZES, cpu_line, mixed_length_sentences, rotations, spoken_clips, whisper_folder
from taskzoo.demo import quiet_libraries

MARIAN = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
              encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512, activation_function="swish",
              scale_embedding=True, share_encoder_decoder_embeddings=True)  # Helsinki-NLP/opus-mt-en-de
def marian_folder(folder: Path, new_tokens: int) -> Path:
    """opus-mt-en-de's architecture; a word-level tokenizer of its vocabulary size that knows the bench's words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    words = sorted({word for sentence in mixed_length_sentences(200) for word in sentence.split()})
    vocab = {token: i for i, token in enumerate(["</s>", "<unk>", *words])}
    vocab.update({f"w{i}": len(vocab) + i for i in range(58100 - len(vocab))})
    vocab["<pad>"] = 58100
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", model_max_length=512)
    config = MarianConfig(vocab_size=58101, decoder_vocab_size=58101, pad_token_id=58100, eos_token_id=0,
                          decoder_start_token_id=58100, forced_eos_token_id=0, **MARIAN)
    torch.manual_seed(0)
    model = MarianMTModel(config)
    # opus-mt's generation settings (its 4 beams aside), and every output exactly new_tokens long: see above.
    model.generation_config = GenerationConfig(decoder_start_token_id=58100, eos_token_id=0, pad_token_id=58100,
                                               forced_eos_token_id=0, bad_words_ids=[[58100]], max_length=512,
                                               num_beams=1, min_new_tokens=new_tokens)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def compare(title: str, task: str, folder: Path, inputs: list, options: dict, batch_size: int, rounds: int,
            scratch: Path, **load_options) -> None:
    zoos = {"torch fp32": taskzoo.load(task, model=folder, device="cpu", **load_options)}
    for quantize in (None, "int8"):
        started = time.process_time()
        exported = zoos["torch fp32"].export(scratch / f"{folder.name}-{quantize}", quantize=quantize)
        print(f"  export ({quantize or 'fp32'}): {time.process_time() - started:.0f} CPU s", flush=True)
        zoos[f"ONNX Runtime {quantize or 'fp32'}"] = taskzoo.load(task, model=exported, device="cpu", **load_options)
    for variant in ([{}] + ([{"num_beams": options["beams"]}] if options.get("beams") else [])):
        run = {name: (lambda zoo=zoo, variant=variant: zoo.predict(
                   inputs, batch_size=batch_size, progress=False, max_new_tokens=options["new_tokens"], **variant))
               for name, zoo in zoos.items()}
        outputs = {name: side() for name, side in run.items()}  # warm-up
        wall, cpu = {name: [] for name in run}, {name: [] for name in run}
        for order in rotations(list(run), rounds):
            for name in order:
                started, started_cpu = time.perf_counter(), time.process_time()
                run[name]()
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
        decoding = f"{variant['num_beams']} beams" if variant else "greedy"
        print(f"{title}, {decoding}, batch_size={batch_size}, {len(inputs)} inputs x {options['new_tokens']} new "
              f"tokens; medians of {rounds} rounds")
        print(f"  {'side':<22} {'wall s':>8} {'x torch':>8} {'CPU s':>8} {'x torch':>8}  identical to torch")
        base_wall, base_cpu = statistics.median(wall["torch fp32"]), statistics.median(cpu["torch fp32"])
        for name in run:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            same = sum(a == b for a, b in zip(outputs[name], outputs["torch fp32"])) / len(inputs)
            print(f"  {name:<22} {w:8.2f} {base_wall / w:8.2f} {c:8.2f} {base_cpu / c:8.2f}  {same:.0%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["marian", "whisper"], choices=["marian", "whisper"])
    parser.add_argument("--whisper-size", default="tiny", choices=sorted(WHISPER_SIZES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beams", type=int, default=0, help="also time beam search with this many beams")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    quiet_libraries()
    print(cpu_line(), f"; torch threads {torch.get_num_threads()}", flush=True)
    options = {"new_tokens": args.new_tokens, "beams": args.beams}
    with tempfile.TemporaryDirectory(prefix="bench-export-seq2seq-") as scratch:
        scratch = Path(scratch)
        if "marian" in args.models:
            sentences = random.Random(1).sample(mixed_length_sentences(1000, seed=1), args.inputs)
            folder = marian_folder(scratch / "marian", args.new_tokens)
            compare("Marian (opus-mt-en-de size)", "translation", folder, sentences, options, args.batch_size,
                    args.rounds, scratch)
        if "whisper" in args.models:
            (scratch / "clips").mkdir()
            clips = [path for path, _ in spoken_clips(args.inputs, scratch / "clips")]
            folder = whisper_folder(scratch / "whisper", args.whisper_size)
            compare(f"Whisper ({args.whisper_size} size)", "automatic-speech-recognition", folder, clips, options,
                    args.batch_size, args.rounds, scratch, language="en")


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tune a wav2vec2 CTC model or a speech encoder-decoder (Whisper, Speech2Text, ...) on LibriSpeech; report WER.

    accelerate launch recipes/automatic_speech_recognition.py --output-dir runs/librispeech
    python recipes/automatic_speech_recognition.py --max-steps 20

--dataset takes a hub name (an `audio` column and a transcript column) or a local audio folder with
train/ and validation/ subfolders, each holding audio files and a metadata.csv (file_name,text).
"""

import argparse
import json

import taskzoo
from _common import load_splits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="facebook/wav2vec2-base-960h")  # a CTC or encoder-decoder checkpoint
parser.add_argument("--dataset", default="openslr/librispeech_asr")  # hub name or local folder
parser.add_argument("--dataset-config", default="clean")  # the hub dataset's configuration
parser.add_argument("--train-split", default="train.100")  # hub split names
parser.add_argument("--eval-split", default="validation")
parser.add_argument("--text-column", default="text")  # the transcript column
parser.add_argument("--output-dir", default="runs/speech-recognition")
parser.add_argument("--epochs", type=float, default=3)
parser.add_argument("--max-steps", type=int)  # overrides --epochs
parser.add_argument("--batch-size", type=int, default=8)  # per device
parser.add_argument("--learning-rate", type=float, default=3e-5)
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
parser.add_argument("--resume", action="store_true")  # continue the interrupted run in --output-dir
parser.add_argument("--overwrite", action="store_true")  # start over in an --output-dir that holds a run
args = parser.parse_args()

# Load
train, held_out = load_splits(args.dataset, args.eval_split, args.train_split, args.dataset_config)
columns = {args.text_column: "text"} if args.text_column != "text" else None
zoo = taskzoo.load("automatic-speech-recognition", model=args.model)

# Fine-tune (CTC: the feature encoder stays frozen, the default)
result = zoo.finetune(train, eval=held_out, columns=columns, output_dir=args.output_dir, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      mixed_precision=args.mixed_precision, warmup_ratio=0.1,
                      resume_from="latest" if args.resume else None, overwrite=args.overwrite)

# Evaluate and save
metrics = zoo.evaluate(held_out, columns=columns) if held_out is not None else {}
zoo.save(f"{args.output_dir}/final")
print(json.dumps({"recipe": "automatic-speech-recognition", "model": args.model, "dataset": args.dataset,
                  "steps": result.steps, "metrics": metrics}))

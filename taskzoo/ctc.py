"""The character vocabulary of CTC speech models, shared by the speech-recognition task (which builds one
when fine-tuning onto new transcripts) and its testing kit."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def ctc_tokenizer(characters: list[str]):
    """A character tokenizer for CTC: [PAD] (also the CTC blank), [UNK], the word delimiter | and the characters."""
    from transformers import Wav2Vec2CTCTokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: i + 3 for i, c in enumerate(c for c in characters if c != "|")}}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        return Wav2Vec2CTCTokenizer(str(Path(folder) / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                    word_delimiter_token="|", bos_token=None, eos_token=None)

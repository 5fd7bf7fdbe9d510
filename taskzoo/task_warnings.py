"""The warnings a task gives once rather than once per input: a newly initialised head (once per loaded model,
at its first predict or evaluate), and inputs cut to the model's maximum length or outputs stopped at the
length limit (tasks count them as they go; predict, evaluate and finetune warn once at the end of the call)."""

from __future__ import annotations

from taskzoo.errors import warn_at_caller


class TaskWarnings:
    """Mixed into :class:`taskzoo.task.Task` (it reads ``name``, ``source``, ``head_trained``, ``new_weights``)."""

    def warn_if_untrained(self) -> None:
        """Once per loaded model, at its first predict or evaluate: a newly initialised head answers at random."""
        if not self.head_trained and not self.__dict__.get("_warned_untrained"):
            self._warned_untrained = True
            warn_at_caller(self.untrained_message())

    def untrained_message(self) -> str:
        names = ", ".join(self.new_weights[:3]) + (" and more" if len(self.new_weights) > 3 else "") or "its weights"
        return (f"{self.name}: {self.source} holds no trained head for this task ({names} were newly initialised), "
                "so its outputs are random: fine-tune it first.")

    def count_truncated(self, count: int) -> None:
        """Tasks call this when they cut inputs to the model's maximum length."""
        self._truncated = getattr(self, "_truncated", 0) + count

    def count_cut_outputs(self, count: int, limit: int) -> None:
        """taskzoo.generation calls this when generated outputs stop at the length limit, not at their end."""
        cut, most = getattr(self, "_cut_outputs", (0, 0))
        self._cut_outputs = (cut + count, max(most, limit))

    def warn_truncated(self, during: str) -> None:
        """One warning per call, counting the truncated inputs (and cut outputs), instead of one per input."""
        count = self.__dict__.pop("_truncated", 0)
        if count:
            warn_at_caller(f"{self.name}: {count} input(s) were longer than the model's maximum length and "
                           f"were truncated during {during}.")
        cut, limit = self.__dict__.pop("_cut_outputs", (0, 0))
        if cut:
            warn_at_caller(f"{self.name}: {cut} output(s) stopped at the length limit ({limit} new tokens) rather "
                           f"than at their end token during {during}, so they may be cut short; pass a larger "
                           "max_new_tokens.")

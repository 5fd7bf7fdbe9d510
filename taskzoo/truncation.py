"""One warning per call about inputs cut to the model's maximum length and outputs stopped at the length limit,
instead of one per input: tasks count them as they go, and predict, evaluate and finetune warn once at the end."""

from __future__ import annotations

from taskzoo.errors import warn_at_caller


class OutputLimitWarnings:
    """Mixed into :class:`taskzoo.task.Task` (it needs only ``self.name``)."""

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

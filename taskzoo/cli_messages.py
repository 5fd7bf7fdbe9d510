"""What the command line says when a flag is unknown (the command's usage and the flag it likely means), and
how it shows taskzoo's warnings (one line each, as its errors)."""

from __future__ import annotations

import argparse
import difflib
import sys
import warnings
from contextlib import contextmanager

from taskzoo.errors import TaskzooWarning


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of ``parser`` by name."""
    return next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices


def refuse_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A flag that the command does not have stops here, with that command's usage and the flag it likely
    means, rather than with the top-level usage (or a complaint about a required flag the typo hid)."""
    commands, current = commands_of(parser), parser
    for token in argv:
        if token == "--":
            return
        if current is parser and token in commands:
            current = commands[token]
        elif token.startswith("--"):
            name = token.split("=", 1)[0]
            flags = [flag for action in current._actions for flag in action.option_strings if flag.startswith("--")]
            if not any(flag.startswith(name) for flag in flags):  # argparse takes unique abbreviations
                guess = closest_flag(name, flags)
                current.error(f"unrecognized argument {name}" + (f"; did you mean {guess}?" if guess else ""))


def closest_flag(name: str, flags: list[str]) -> str | None:
    """--learning_rate -> --learning-rate, --lr -> --learning-rate (initials), --epoch -> --epochs."""
    words = [word for word in name.lstrip("-").lower().replace("_", "-").split("-") if word]
    spelled = "--" + "-".join(words)
    if spelled in flags:
        return spelled
    initials = [flag for flag in flags if len(words) == 1 and len(flag[2:].split("-")) > 1
                and "".join(word[0] for word in flag[2:].split("-") if word) == words[0]]
    if len(initials) == 1:
        return initials[0]
    close = difflib.get_close_matches(spelled, flags, n=1)
    return close[0] if close else None


@contextmanager
def warnings_as_lines(command: str):
    """taskzoo's warnings as one line each, as its errors are: ``taskzoo predict: warning: ...``. Other
    libraries' warnings show as Python shows them."""
    show = warnings.showwarning

    def one_line(message, category, *args, **kwargs):
        if issubclass(category, TaskzooWarning):
            print(f"taskzoo {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)
    warnings.showwarning = one_line
    try:
        yield
    finally:
        warnings.showwarning = show

"""taskzoo's exceptions. Each is a ValueError or OSError subclass, so existing handlers still catch them."""


class TaskzooError(Exception):
    """Base class of every error taskzoo raises on purpose."""


class UnknownTaskError(TaskzooError, ValueError):
    """The task name is not registered."""


class ModelNotFoundError(TaskzooError, OSError):
    """No model could be found at any of the places taskzoo looked."""


class DataError(TaskzooError, ValueError):
    """The data cannot be used for the task: wrong columns, empty, bad values."""


class TrainingError(TaskzooError, RuntimeError):
    """Fine-tuning cannot go on (for example: the loss became NaN)."""


class ExportError(TaskzooError, ValueError):
    """A model that cannot be exported, or an exported model (ONNX) asked to do what only the torch one can."""


class LaunchError(TaskzooError, RuntimeError):
    """The processes were launched in a way that would make them work against each other."""


# The library's messages suggest fixes in Python syntax; the command line says the same in its own flags.
_CLI_SPELLINGS = [
    (r"[Rr]ename yours with columns=\{'your_column': '(\w+)'\}", r"Rename yours with --columns YOUR_COLUMN=\1"),
    (r"\bcolumns= maps\b", "--columns maps"),
    (r"\(model='/path/to/model'\)", "(--model PATH)"),
    (r"\bpass overwrite=True\b", "pass --set overwrite=true"),
    (r"\bmixed_precision='(\w+)'", r"--mixed-precision \1"),
    (r"\bdevice='([^']*)'", r"--device \1"),
]


def in_cli_syntax(message: str) -> str:
    """``message`` on one line, with the hints that name Python arguments rewritten as command-line flags."""
    import re

    for pattern, replacement in _CLI_SPELLINGS:
        message = re.sub(pattern, replacement, message)
    # One line: a list of bullets ("Tried:\n  - a\n  - b\nTo work offline, ...") becomes
    # "Tried: a; b. To work offline, ...".
    text, in_list = "", False
    for line in (line.strip() for line in message.strip().splitlines()):
        bullet = line.startswith("- ")
        if line:
            separator = "" if not text else ("; " if in_list else " ") if bullet else (". " if in_list else " ")
            text += separator + (line[2:] if bullet else line)
            in_list = bullet
    return text


def warn_at_caller(message: str) -> None:
    """``warnings.warn`` pointing at the first line outside taskzoo (and outside the contextlib frames of its
    decorators), so that the warning names the user's call however deep in taskzoo it was raised."""
    import contextlib
    import os
    import sys
    import warnings

    package, frame, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(1), 2
    while frame is not None and (frame.f_code.co_filename.startswith(package + os.sep)
                                 or frame.f_code.co_filename == contextlib.__file__):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)

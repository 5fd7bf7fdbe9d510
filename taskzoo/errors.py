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


class ExistingRunError(TrainingError):
    """output_dir holds an earlier run (its checkpoints, best/ or last/) that a new run would replace: resume it
    with resume_from="latest", or start over with overwrite=True; the message says which apply."""

    def __init__(self, output_dir, situation: str, resumable: bool):
        self.output_dir, self.situation, self.resumable = output_dir, situation, resumable
        remedy = ("Resume it with resume_from='latest', or start over (deleting its checkpoints) with overwrite=True."
                  if resumable else "Choose another output_dir, or replace it with overwrite=True.")
        super().__init__(f"output_dir {output_dir} {situation}. {remedy}")

    def for_command_line(self, command: str, arguments: list[str]) -> str:
        """The message with the exact commands to run: the refused ``command`` and ``arguments``, plus a flag."""
        again = f"--output-dir {self.output_dir} {self.situation}."
        if self.resumable:
            return (f"{again} Resume it, or start over (deleting its checkpoints):\n"
                    f"  {rerun(command, arguments, '--resume')}\n  {rerun(command, arguments, '--overwrite')}")
        return f"{again} Choose another --output-dir, or replace it:\n  {rerun(command, arguments, '--overwrite')}"


class TrainingInterrupted(KeyboardInterrupt):
    """Fine-tuning was interrupted (Ctrl-C): the message says at which step, where the last checkpoint is and how
    to resume from it. A KeyboardInterrupt, so that `except Exception` never swallows it."""

    def __init__(self, output_dir, step: int, total_steps: int, checkpoint=None, checkpoint_step: int | None = None,
                 start_over_needs_overwrite: bool = False):
        self.output_dir, self.step, self.total_steps = output_dir, step, total_steps
        self.checkpoint, self.checkpoint_step = checkpoint, checkpoint_step
        self.start_over_needs_overwrite = start_over_needs_overwrite
        if checkpoint is not None:
            then = (f"resume from it by calling finetune again with resume_from='latest' and "
                    f"output_dir={str(output_dir)!r}.")
        else:
            then = "start over with overwrite=True." if start_over_needs_overwrite else "the same call starts over."
        super().__init__(f"{self._where()}; {then}")

    def _where(self) -> str:
        if self.checkpoint is not None:
            return (f"Fine-tuning interrupted at step {self.step} of {self.total_steps}. Its last checkpoint is "
                    f"{self.checkpoint} (step {self.checkpoint_step})")
        return (f"Fine-tuning interrupted at step {self.step} of {self.total_steps}, before its first checkpoint: "
                "nothing to resume (a checkpoint is written at each evaluation and epoch end, or every N steps with "
                "checkpoint_every=N)")

    def for_command_line(self, command: str, arguments: list[str]) -> str:
        """The message with the exact command that resumes (or starts over): ``command`` and ``arguments`` again,
        plus a flag."""
        where = self._where().replace("Fine-tuning interrupted", "interrupted")
        if self.checkpoint is not None:
            return f"{where}; resume from it with:\n  {rerun(command, arguments, '--resume')}"
        flag = "--overwrite" if self.start_over_needs_overwrite else None
        return f"{where}. Start over with:\n  {rerun(command, arguments, flag)}"


def rerun(command: str, arguments: list[str], flag: str | None) -> str:
    """The shell line that runs ``command`` with ``arguments`` again; with ``flag``, without the options that chose
    to resume or start over (``--resume``, ``--overwrite``, ``--set resume_from=...``, ``--set overwrite=...``)
    and with ``flag`` instead."""
    import shlex

    if flag is None:
        return f"{command} {shlex.join(arguments)}"
    choices = ("resume_from=", "overwrite=")
    kept = []
    for item in arguments:
        if item in ("--resume", "--overwrite") or item.startswith(tuple(f"--set={c}" for c in choices)):
            continue
        if item.startswith(choices) and kept and kept[-1] == "--set":
            kept.pop()
            continue
        kept.append(item)
    return f"{command} {shlex.join([*kept, flag])}"


def say_how_to_go_on(stop: ExistingRunError | TrainingInterrupted, name: str, arguments: list[str], program: str,
                     launched: str) -> None:
    """Print a refused or interrupted run's message to standard error (once, under several processes), with the
    commands to run next: ``program`` and ``arguments`` again, or ``launched`` under `accelerate launch`/`torchrun`
    ("-m taskzoo.cli" for the command line, a recipe's path for a recipe), plus --resume or --overwrite."""
    import os
    import sys

    if os.environ.get("RANK", "0") != "0":
        return
    if "ACCELERATE_DYNAMO_BACKEND" in os.environ:  # set by every `accelerate launch`
        program = f"accelerate launch [your launch options] {launched}"
    elif "TORCHELASTIC_RUN_ID" in os.environ:
        program = f"torchrun [your launch options] {launched}"
    error = "error: " if isinstance(stop, ExistingRunError) else ""
    print(f"{name}: {error}{stop.for_command_line(program, [str(item) for item in arguments])}", file=sys.stderr)


class TaskzooWarning(UserWarning):
    """What taskzoo warns about (truncated inputs, a head that was never trained, ...); the command line shows
    each as one line."""


# The library's messages suggest fixes in Python syntax; the command line says the same in its own flags.
_CLI_SPELLINGS = [
    (r"[Rr]ename yours with columns=\{'your_column': '(\w+)'\}", r"Rename yours with --columns YOUR_COLUMN=\1"),
    (r"\bcolumns= maps\b", "--columns maps"),
    (r"\(model='/path/to/model'\)", "(--model PATH)"),
    (r"\bpass overwrite=True\b", "pass --overwrite"),
    (r"\bresume_from='latest'", "--resume"),
    (r"\bmixed_precision='(\w+)'", r"--mixed-precision \1"),
    (r"\bdevice='([^']*)'", r"--device \1"),
    (r"^predict\(\) got an unknown option\b", "unknown --set option"),
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
    decorators, and abc's around a class statement), so that the warning names the user's call (or class) however
    deep in taskzoo it was raised."""
    import abc
    import contextlib
    import os
    import sys
    import warnings

    package, frame, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(1), 2
    while frame is not None and (frame.f_code.co_filename.startswith(package + os.sep)
                                 or frame.f_code.co_filename in (contextlib.__file__, abc.__file__, "<frozen abc>")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, TaskzooWarning, stacklevel=level)


def renamed(options: dict, renames: dict[str, str], where: str) -> dict:
    """``options`` with each old name in ``renames`` (old -> new) replaced by its new one, warning once per call
    (a TaskzooWarning): an old name keeps working for one release after its rename."""
    old = [name for name in options if name in renames]
    for name in old:
        if renames[name] in options:
            raise TypeError(f"{where} got both {name}= and {renames[name]}=, its new name.")
        warn_at_caller(f"{where}: {name}= is renamed {renames[name]}=; the old name goes in the next release.")
    return {renames.get(name, name): value for name, value in options.items()} if old else options

"""Write docs/api.md from the docstrings and signatures of the public API.

    python scripts/make_api_docs.py          # rewrite docs/api.md
    python scripts/make_api_docs.py --check  # exit 1 if docs/api.md is out of date (the tests run this)

The public functions' docstrings are Google style (see taskzoo.api.load): a summary line, then "Args:",
"Returns:" and "Raises:" sections, each entry "name: text" indented 4 spaces, its continuation lines 8;
they are rendered here as lists.
"""

import dataclasses
import inspect
import sys
from pathlib import Path

import taskzoo
from taskzoo.task import Task
from taskzoo.training import TrainingConfig, TrainingResult

TARGET = Path(__file__).resolve().parent.parent / "docs" / "api.md"
TASK_METHODS = ["predict", "predict_to_jsonl", "evaluate", "finetune", "save", "from_pretrained", "tiny_model",
                "toy_dataset"]


SECTIONS = ("Args:", "Returns:", "Raises:")  # Google style, as the public API's docstrings are written


def markdown(doc: str) -> str:
    """A docstring with Google-style sections as Markdown: "Args:" and "Raises:" become lists of the names in
    code, "Returns:" a paragraph; the prose around them is kept as written."""
    out, section = [], None
    for line in doc.splitlines():
        if line.strip() in SECTIONS:
            section = line.strip()
            out += ["", f"**{section[:-1]}**", ""]
        elif section and line.startswith("        "):  # an entry's continuation
            out[-1] += " " + line.strip()
        elif section and line.startswith("    "):
            name, _, text = line.strip().partition(": ")
            out.append(line.strip() if section == "Returns:" else f"- `{name}`: {text}")
        else:
            section = None if line.strip() else section
            out.append(line)
    return "\n".join(out).replace("\n\n\n", "\n\n")


def entry(name: str, obj) -> str:
    signature = str(inspect.signature(obj)).replace("self, ", "").replace("(self)", "()")
    doc = markdown(inspect.getdoc(obj) or "")
    return f"### `{name}{signature}`\n\n{doc}\n"


def fields_table(cls) -> str:
    rows = ["| field | default |", "|---|---|"]
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else "(computed)"
        rows.append(f"| `{field.name}` | `{default!r}` |")
    return "\n".join(rows) + "\n"


def render() -> str:
    parts = ["# API reference\n", "Generated from the docstrings by `python scripts/make_api_docs.py`; "
             "do not edit by hand.\n", "## Functions\n"]
    for name in ["task_names", "load", "run", "finetune", "evaluate", "visualize", "serve"]:
        if hasattr(taskzoo, name):
            parts.append(entry(f"taskzoo.{name}", getattr(taskzoo, name)))
    from taskzoo import demo, testing

    parts.append("## Testing kit and demo\n\nTiny random models and toy data for every task, offline "
                 "(`taskzoo tiny-model`, `taskzoo demo` on the command line).\n")
    for name, obj in [("taskzoo.testing.tiny_model", testing.tiny_model),
                      ("taskzoo.testing.toy_dataset", testing.toy_dataset), ("taskzoo.demo.run_demo", demo.run_demo)]:
        parts.append(entry(name, obj))
    parts.append("## A loaded task\n\n`taskzoo.load()` returns an instance of the task's class; all share these "
                 "methods (from `taskzoo.task.Task`).\n")
    for name in TASK_METHODS:
        parts.append(entry(name, getattr(Task, name)))
    parts.append("## Fine-tuning options (`TrainingConfig`)\n\n" + (inspect.getdoc(TrainingConfig) or "") + "\n")
    parts.append(fields_table(TrainingConfig))
    parts.append("Each task adds its own options (`finetune_options`); the base ones are "
                 + ", ".join(f"`{k}={v!r}`" for k, v in Task.finetune_options.items()) + ".\n")
    parts.append("\n## The result of fine-tuning (`TrainingResult`)\n\n" + fields_table(TrainingResult))
    parts.append("\n## Tasks\n")
    from taskzoo.registry import ALIASES, TASKS

    for name, spec in sorted(TASKS.items()):
        cls = spec.load_class()
        aliases = [alias for alias, target in ALIASES.items() if target == name]
        own = {k: v for k, v in cls.finetune_options.items() if Task.finetune_options.get(k, object()) != v}
        parts.append(f"### `{name}`" + (f" (aliases: {', '.join(aliases)})" if aliases else "") + "\n")
        parts.append(f"`{cls.__module__}.{cls.__name__}` — default model `{spec.default_model}`"
                     + (f" at revision `{spec.default_revision}`" if spec.default_revision else "")
                     + f"; primary metric `{cls.primary_metric}`; strategies {', '.join(cls.supported_strategies)}.\n")
        parts.append((inspect.getdoc(sys.modules[cls.__module__]) or "") + "\n")
        if own:
            parts.append("Its own finetune options: " + ", ".join(f"`{k}={v!r}`" for k, v in own.items()) + ".\n")
    parts.append("\n## Errors\n")
    for name in ["TaskzooError", "UnknownTaskError", "ModelNotFoundError", "DataError", "TrainingError",
                 "ExistingRunError", "TrainingInterrupted"]:
        error = getattr(taskzoo, name)
        bases = ", ".join(base.__name__ for base in error.__bases__)
        parts.append(f"- `taskzoo.{name}({bases})`: {inspect.getdoc(error)}")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if TARGET.exists() and TARGET.read_text() == text else 1)
    TARGET.write_text(text)
    print(f"wrote {TARGET}")

"""The playground's form for a task, as /info gives it to the page (static/playground.js draws any such form).

A form is ``{"fields": [...], "output": "..."}``, from the task's ``playground_form`` or, where it has none, one
field for its ``input_type``. Each field is a dict:

- ``id``: the HTML element's id; ``label``; ``value``: what it starts with; ``step`` for numbers;
- ``type``: ``text`` (one line), ``textarea``, ``lines`` (a textarea sent as a list, one item per line),
  ``number``, ``select`` (with ``options``, a list of values), ``image`` or ``audio`` (a file, uploaded; audio
  also gets a microphone button); at most one image or audio field;
- ``to``: where its value goes in the request: ``inputs`` (the input itself), ``inputs.KEY`` (a key of an input
  that is a JSON object), ``inputs.0``, ``inputs.1`` (the parts of a pair, sent as one input), or
  ``parameters.NAME`` (a predict option);
- ``optional``: left out of the request when empty.

``output`` says how the answer is shown: ``labels`` (``{"label", "score"}`` items as score bars), ``scores``
(numbers as bars, named by the lines of the form's ``lines`` field), ``boxes`` or ``masks`` (drawn over the
uploaded image), ``text`` (the answer's string), ``image`` (the answer's base64 PNG), ``json`` (as it is) or
``auto`` (the default: chosen from the answer's shape).

The form is checked when the server starts, so that a mistake in a task of your own is named there, in one line.
"""

from __future__ import annotations

import re

INPUT_TYPES = ("text", "image", "audio")
FIELD_TYPES = ("text", "textarea", "lines", "number", "select", "image", "audio")
OUTPUTS = ("auto", "labels", "scores", "boxes", "masks", "text", "image", "json")
TARGET = re.compile(r"inputs(\.\w+)?|parameters\.\w+")


def form_of(task) -> dict:
    """The task's playground form, checked (a ValueError names what is wrong)."""
    if task.input_type not in INPUT_TYPES:
        raise ValueError(f"{task.name}: input_type must be one of {INPUT_TYPES}; got {task.input_type!r}.")
    form = task.playground_form or default_form(task)
    check_form(task, form)
    return {"output": "auto", **form}


def default_form(task) -> dict:
    """One field for the task's input: a text box (holding the example input, where that is text) or a file."""
    if task.input_type == "text":
        example = task.example_input if isinstance(task.example_input, str) else ""
        field = {"id": "text", "type": "textarea", "label": "Text", "value": example}
    else:
        field = {"id": "file", "type": task.input_type, "label": f"{task.input_type.capitalize()} file"}
    return {"fields": [{**field, "to": "inputs"}], "output": "auto"}


def check_form(task, form) -> None:
    where = f"{task.name}: playground_form"
    if not isinstance(form, dict) or not isinstance(form.get("fields"), list) or not form["fields"]:
        raise ValueError(f'{where} must be a dict {{"fields": [...], "output": ...}} with at least one field; '
                         f"got {form!r:.100}.")
    if form.get("output", "auto") not in OUTPUTS:
        raise ValueError(f"{where}: output must be one of {OUTPUTS}; got {form.get('output')!r}.")
    ids = set()
    for number, field in enumerate(form["fields"]):
        name = f"{where}, field {number}"
        if not isinstance(field, dict) or not isinstance(field.get("id"), str) or field["id"] in ids:
            raise ValueError(f"{name} needs an 'id' of its own (a string); got {field!r:.100}.")
        ids.add(field["id"])
        if field.get("type") not in FIELD_TYPES:
            raise ValueError(f"{name} ({field['id']!r}): type must be one of {FIELD_TYPES}; got {field.get('type')!r}.")
        if not isinstance(field.get("to"), str) or not TARGET.fullmatch(field["to"]):
            raise ValueError(f"{name} ({field['id']!r}): 'to' must be 'inputs', 'inputs.KEY' or 'parameters.NAME'; "
                             f"got {field.get('to')!r}.")
        if field["type"] == "select" and not (isinstance(field.get("options"), list) and field["options"]):
            raise ValueError(f"{name} ({field['id']!r}): a select field needs 'options', a list of values.")
    # Images and audio are uploaded as files, one input each: the other fields can only set predict options.
    media = [field for field in form["fields"] if field["type"] in ("image", "audio")]
    inputs = [field for field in form["fields"] if field["to"].startswith("inputs")]
    if task.input_type == "text" and media:
        raise ValueError(f"{where}: {task.name} takes text (input_type 'text'); field {media[0]['id']!r} is "
                         f"an {media[0]['type']} field.")
    if task.input_type != "text" and (inputs != media or len(media) != 1 or media[0]["type"] != task.input_type
                                      or media[0]["to"] != "inputs"):
        raise ValueError(f"{where}: {task.name} takes {task.input_type} files, so its form has one "
                         f"{task.input_type} field with 'to': 'inputs', and its other fields set parameters.NAME.")
    shapes = {"one" if field["to"] == "inputs" else "pair" if field["to"][7:].isdigit() else "object"
              for field in inputs}
    if not inputs or len(shapes) > 1 or (shapes == {"one"} and len(inputs) > 1):
        raise ValueError(f"{where}: the input comes from one field ('to': 'inputs'), from 'inputs.0' and 'inputs.1' "
                         f"(a pair) or from 'inputs.KEY' fields (an object); the fields go to "
                         f"{[field['to'] for field in inputs]}.")

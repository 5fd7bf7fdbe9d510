"""The command line: taskzoo tasks | predict | finetune | evaluate | export | tiny-model | demo | serve.

Outputs are JSON (one line per input for predict), so they pipe into other tools; messages go to
standard error. Fine-tuning runs unchanged under `accelerate launch -m taskzoo.cli finetune ...`.
Nothing heavy (torch, transformers) is imported before a command needs it: `taskzoo tasks` and
`taskzoo --help` answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from taskzoo import __version__
from taskzoo.cli_messages import commands_of, refuse_unknown_flags, warnings_as_lines
from taskzoo.errors import TaskzooError, in_cli_syntax


class UsageError(TaskzooError, ValueError):
    """A command line that cannot work (a missing file, an unknown option): printed as one line."""


def _value(text: str):
    """A command-line value: JSON when it parses (numbers, lists, dicts, true/false), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str] | None, flag: str) -> dict:
    form = "YOUR_COLUMN=TASK_COLUMN (e.g. --columns review=text)" if flag == "--columns" else \
        f"KEY=VALUE (e.g. {flag} top_k=2)"
    result = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not key.strip() or not value.strip():
            raise UsageError(f"{flag} expects {form}; got {item!r}.")
        result[key.strip()] = value.strip() if flag == "--columns" else _value(value)
    return result


def _check_exists(path: str | None, flag: str) -> None:
    """A missing data file is named with its flag before any model loads."""
    if path is not None and not Path(path).exists():
        raise UsageError(f"{flag} {path}: no such file or folder.")


def _check_options(given: dict, known: list[str] | None, command: str) -> None:
    """Refuse an unknown ``--set`` option before any model loads, listing those that exist (None: any
    option is accepted)."""
    import difflib

    for key in given:
        if known is not None and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown --set option {key!r} for taskzoo {command}.{hint} "
                             f"Options: {', '.join(sorted(known))}.")


def _input(value):
    """A predict input from the command line: JSON lists of two strings become pairs."""
    value = _value(value) if isinstance(value, str) else value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return tuple(value)
    return value


def _read_inputs(path: str) -> list:
    """Inputs from a file: JSON lines (a value or {"input": value} per line), or plain text lines."""
    inputs = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            value = _value(line)
            inputs.append(_input(value["input"] if isinstance(value, dict) and "input" in value else value))
    return inputs


def cmd_tasks(args) -> None:
    from taskzoo.models import PACKAGED_MODELS
    from taskzoo.registry import ALIASES, TASKS

    rows = [("task", "default model", "revision", "aliases")]
    for name, entry in sorted(TASKS.items()):
        packaged = entry.default_model.lower().removeprefix("sentence-transformers/") in PACKAGED_MODELS
        rows.append((name, entry.default_model, "packaged" if packaged else entry.default_revision or "latest",
                     ", ".join(alias for alias, target in ALIASES.items() if target == name)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(("  ".join(value.ljust(width) for value, width in zip(row, widths)) + "  " + row[3]).rstrip())


def cmd_predict(args) -> None:
    import taskzoo
    from taskzoo import predict_files
    from taskzoo.predict_options import check_options
    from taskzoo.registry import get_task
    from taskzoo.result_files import json_line

    inputs = [_input(item) for item in args.inputs]
    if args.input_file:
        if not Path(args.input_file).is_file():
            raise UsageError(f"--input-file {args.input_file}: no such file.")
        inputs += _read_inputs(args.input_file)
    if args.data and inputs:
        raise UsageError("give inputs as arguments or --input-file, or rows with --data; not both.")
    if not inputs and not args.data:
        raise UsageError("give inputs as arguments, with --input-file, or rows with --data.")
    if (args.resume or args.data) and not args.output:
        raise UsageError(f"{'--resume' if args.resume else '--data'} needs --output (a JSON lines file).")
    if args.data:
        _check_exists(args.data, "--data")
    if args.output and not (args.resume or args.overwrite):
        _check_new_output(Path(args.output))
    options = _pairs(args.set, "--set")
    check_options(get_task(args.task).load_class(), options)  # before the model loads
    batch_size = args.batch_size or options.pop("batch_size", None)
    zoo = taskzoo.load(args.task, args.model, device=args.device)
    files = dict(batch_size=batch_size, resume=args.resume, save_visuals=args.save_visuals)
    if args.data:
        zoo.predict_to_jsonl(args.data, args.output, columns=_pairs(args.columns, "--columns"),
                             id_column=args.id_column, **files, **options)
    elif args.output:
        predict_files.write_predictions(zoo, predict_files.Inputs(inputs), args.output, **files, **options)
    else:
        outputs = zoo.predict(inputs, batch_size=batch_size, **options)
        for index, (item, output) in enumerate(zip(inputs, outputs)):
            sys.stdout.write(json_line(zoo, index, {"input": item}, item, output, args.save_visuals))


def _check_new_output(output: Path) -> None:
    """predict --output: an existing file (or the part files of an interrupted multi-process run) is refused.
    Every process checks before any writes it (write_predictions waits for all before it does)."""
    import glob

    if (output.is_file() and output.stat().st_size) or list(output.parent.glob(f"{glob.escape(output.name)}.part-*")):
        raise UsageError(f"--output {output} already exists: pass --resume to continue it, or --overwrite to "
                         "replace it.")


def cmd_finetune(args) -> None:
    import taskzoo
    from taskzoo.checkpoints import check_output_dir
    from taskzoo.errors import ExistingRunError, TrainingInterrupted, say_how_to_go_on
    from taskzoo.registry import get_task
    from taskzoo.training import TrainingConfig

    _check_exists(args.train, "--train")
    _check_exists(args.eval, "--eval")
    columns = _pairs(args.columns, "--columns")
    flags = dict(output_dir=args.output_dir, epochs=args.epochs, max_steps=args.max_steps,
                 batch_size=args.batch_size, learning_rate=args.learning_rate,
                 mixed_precision=args.mixed_precision, seed=args.seed,
                 resume_from="latest" if args.resume else None, overwrite=args.overwrite or None)
    # Dedicated flags win over the same option given with --set.
    config = {**_pairs(args.set, "--set"), **{key: value for key, value in flags.items() if value is not None}}
    task_class = get_task(args.task).load_class()
    known = [*TrainingConfig.__dataclass_fields__, *task_class.finetune_options, *task_class.renamed_options]
    _check_options(config, known, "finetune")
    # A line per evaluation on standard error, through the trackers' hook (the user's trackers still log).
    trackers = config.get("log_with") or []
    config["log_with"] = [*([trackers] if isinstance(trackers, str) else trackers), _evaluation_printer()]
    if args.metric:
        config["metrics"] = args.metric
    try:
        # An earlier run in --output-dir is refused before the model loads (and a wrong --resume fails then).
        check_output_dir(Path(args.output_dir), bool(config.get("overwrite")), config.get("resume_from"))
        zoo = taskzoo.load(args.task, args.model, device=_accelerate_on(args.device))
        result = zoo.finetune(args.train, eval=args.eval, columns=columns, **config)
    except (ExistingRunError, TrainingInterrupted) as stop:  # the commands that resume or start over
        say_how_to_go_on(stop, "taskzoo finetune", args.argv, "taskzoo", "-m taskzoo.cli")
        raise SystemExit(2 if isinstance(stop, ExistingRunError) else 130) from None
    print(json.dumps({"output_dir": str(result.output_dir), "steps": result.steps, "metric": result.metric,
                      "best_metric": result.best_metric, "final_metrics": result.final_metrics,
                      "seconds": round(result.seconds, 2)}))


def _evaluation_printer():
    """An Accelerate tracker that prints one line per evaluation: step, the last training loss, metrics."""
    from accelerate.tracking import GeneralTracker
    from tqdm.auto import tqdm

    class EvaluationPrinter(GeneralTracker):
        name, requires_logging_directory, tracker = "taskzoo-cli", False, None

        def __init__(self):
            super().__init__()
            self.loss = None

        def log(self, values: dict, step: int | None = None, **kwargs):
            # The training loss is logged every log_every steps: shown when one was logged since the last line.
            self.loss = values.get("loss", self.loss)
            metrics = {key.removeprefix("eval_"): value for key, value in values.items() if key.startswith("eval_")}
            if metrics:
                loss, self.loss = (f"loss {self.loss:.4f}  " if self.loss is not None else ""), None
                scores = "  ".join(f"{key} {value:.4f}" for key, value in metrics.items()
                                   if isinstance(value, (int, float)))
                tqdm.write(f"step {step}  {loss}{scores}", file=sys.stderr)

    return EvaluationPrinter()


def cmd_evaluate(args) -> None:
    import taskzoo

    _check_exists(args.data, "--data")
    columns = _pairs(args.columns, "--columns")
    zoo = taskzoo.load(args.task, args.model, device=_accelerate_on(args.device))
    print(json.dumps(zoo.evaluate(args.data, batch_size=args.batch_size, columns=columns, metrics=args.metric)))


def _accelerate_on(device: str | None) -> str | None:
    """finetune and evaluate run on the device Accelerate chooses, once per process, from its environment:
    --device sets that environment before anything has chosen. Returns the device to load the model on."""
    if device is None:
        return None
    from taskzoo.accelerators import check_device

    check_device(device)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise UsageError("--device picks one device for one process; under accelerate launch or torchrun each "
                         "process gets its own: leave --device out.")
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    else:
        os.environ["ACCELERATE_TORCH_DEVICE"] = device
    return device


def cmd_export(args) -> None:
    import taskzoo

    zoo = taskzoo.load(args.task, args.model, device="cpu")
    print(zoo.export(args.output, format=args.format, quantize=args.quantize))


def cmd_tiny_model(args) -> None:
    from taskzoo.testing import tiny_model

    print(tiny_model(args.task, args.path, family=args.family))


def cmd_demo(args) -> None:
    from taskzoo.demo import run_demo

    run_demo(args.tasks or None, output_dir=args.output_dir)


EXAMPLES = """examples:
  taskzoo predict sentence-similarity --model all-MiniLM-L6-v2 '["A man plays a guitar.", "Someone plays music."]'
  taskzoo finetune text-classification --model all-MiniLM-L6-v2 --train train.csv --eval dev.csv --output-dir run

Set TASKZOO_DEBUG=1 to see the traceback behind an error."""


def _task_names() -> str:
    from taskzoo.registry import TASKS

    return ", ".join(sorted(TASKS))


def _add_task_and_model(parser, verb: str, model_help: str = "local folder, packaged model (all-MiniLM-L6-v2) "
                        "or hub id; default: the task's pinned default (see taskzoo tasks)") -> None:
    parser.add_argument("task", help=f"the task to {verb}: a task name or alias, e.g. text-classification "
                        "(taskzoo tasks lists them)")
    parser.add_argument("--model", metavar="PATH", help=model_help)


DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: a GPU when there is one)"
METRIC_HELP = ("your own metric, next to the task's (repeatable): a local evaluate metric script or folder, or the "
               "name of an evaluate metric (needs the hub or its cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskzoo", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Predict with, evaluate and fine-tune pretrained models, offline first. Outputs are JSON.\n\n"
                    f"tasks: {_task_names()}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("tasks", help="list the tasks, their aliases and pinned default models"
                        ).set_defaults(run=cmd_tasks)

    predict = commands.add_parser("predict", help="predict with a model; one JSON line per input")
    _add_task_and_model(predict, "predict")
    predict.add_argument("inputs", nargs="*", help="texts, paths, or JSON values (a JSON pair for pairs)")
    predict.add_argument("--input-file", help="JSON lines or plain text lines, one input each")
    predict.add_argument("--data", help="predict every row of a CSV / JSON / JSONL / Parquet file or an image, "
                         "audio or COCO folder (streamed; needs --output; see docs/predict.md)")
    predict.add_argument("--output", help="write JSON lines here instead of standard output")
    rerun = predict.add_mutually_exclusive_group()
    rerun.add_argument("--resume", action="store_true", help="continue an interrupted --output file")
    rerun.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    predict.add_argument("--id-column", help="with --data: the column copied into each line (default: id)")
    predict.add_argument("--columns", action="append", metavar="YOURS=TASKS", help="with --data: rename a column")
    predict.add_argument("--save-visuals", metavar="DIR", help="write output images (generated images, "
                         "masks, drawings of boxes) as PNG files here; the JSON holds their paths")
    predict.add_argument("--batch-size", type=int)
    predict.add_argument("--device", help=DEVICE_HELP)
    predict.add_argument("--set", action="append", metavar="KEY=VALUE", help="a predict option, e.g. top_k=2")
    predict.set_defaults(run=cmd_predict)

    finetune = commands.add_parser("finetune", help="fine-tune a model; prints a line per evaluation, then JSON")
    _add_task_and_model(finetune, "fine-tune for")
    finetune.add_argument("--train", required=True, help="CSV / JSON / JSONL / Parquet file or folder")
    finetune.add_argument("--eval", help="held-out data in the same formats, scored after each epoch")
    finetune.add_argument("--output-dir", required=True, help="where best/, last/ and log.jsonl go")
    finetune.add_argument("--epochs", type=float)
    finetune.add_argument("--max-steps", type=int)
    finetune.add_argument("--batch-size", type=int)
    finetune.add_argument("--learning-rate", type=float)
    finetune.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    finetune.add_argument("--device", help=DEVICE_HELP)
    finetune.add_argument("--seed", type=int)
    finetune.add_argument("--columns", action="append", metavar="YOURS=TASKS",
                          help="rename a column, e.g. review=text")
    finetune.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other finetune option")
    finetune.add_argument("--metric", action="append", metavar="PATH_OR_NAME", help=METRIC_HELP)
    rerun = finetune.add_mutually_exclusive_group()
    rerun.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir from "
                       "its last checkpoint")
    rerun.add_argument("--overwrite", action="store_true", help="start over in an --output-dir that holds an "
                       "earlier run (deleting its checkpoints; its best/ and last/ are replaced) or other files")
    finetune.set_defaults(run=cmd_finetune)

    evaluate = commands.add_parser("evaluate", help="evaluate a model on labelled data; prints JSON metrics")
    _add_task_and_model(evaluate, "evaluate")
    evaluate.add_argument("--data", required=True, help="CSV / JSON / JSONL / Parquet file or folder")
    evaluate.add_argument("--batch-size", type=int)
    evaluate.add_argument("--device", help=DEVICE_HELP)
    evaluate.add_argument("--columns", action="append", metavar="YOURS=TASKS",
                          help="rename a column, e.g. review=text")
    evaluate.add_argument("--metric", action="append", metavar="PATH_OR_NAME", help=METRIC_HELP)
    evaluate.set_defaults(run=cmd_evaluate)

    export = commands.add_parser("export", help="export a model to ONNX (fp32 or int8) for ONNX Runtime; "
                                 "predict, evaluate and serve load the folder as they load a model")
    _add_task_and_model(export, "export")
    export.add_argument("--output", required=True, help="the folder to write")
    export.add_argument("--quantize", choices=["int8"], help="int8 weights for the matrix products (default: fp32)")
    export.add_argument("--format", default="onnx", choices=["onnx"])
    export.set_defaults(run=cmd_export)

    tiny = commands.add_parser("tiny-model", help="save the testing kit's tiny random model for a task")
    tiny.add_argument("task", help="the task whose tiny model to build: a task name or alias, e.g. "
                      "text-classification (taskzoo tasks lists them)")
    tiny.add_argument("path", help="the folder to write (a normal HF model folder)")
    tiny.add_argument("--family", help="another architecture than the task's default, e.g. modernbert, t5, beit, "
                      "detr, whisper, sdxl (each task's docs page lists its families)")
    tiny.set_defaults(run=cmd_tiny_model)

    demo = commands.add_parser("demo", help="offline tour: tiny models, toy data, fine-tune each task")
    demo.add_argument("tasks", nargs="*", help="only these tasks (default: all)")
    demo.add_argument("--output-dir", help="where the pictures and index.html go (default: ./taskzoo-demo, "
                      "or ./taskzoo-demo-2, ... when that exists)")
    demo.set_defaults(run=cmd_demo)

    from taskzoo.serving import add_arguments as serve_arguments  # light: the web stack loads on `serve` only
    serve_arguments(commands.add_parser("serve", help="serve a model over HTTP, with a browser playground"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_unknown_flags(parser, argv)
    # argparse gives a positional list nothing once an option came between (`predict TASK --model M x`):
    # collect those leftovers as predict inputs instead of refusing them.
    args, leftovers = parser.parse_known_args(argv)
    if leftovers and (args.command != "predict" or any(item.startswith("--") for item in leftovers)):
        commands_of(parser)[args.command].error(f"unrecognized arguments: {' '.join(leftovers)}")
    if leftovers:
        args.inputs += leftovers
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to print the command that resumes a run
    try:
        with warnings_as_lines(args.command):
            args.run(args)
    except (TaskzooError, ValueError, TypeError, OSError, ImportError) as error:
        # Errors that bad input causes already say what to do: one line, in the command line's own
        # terms, without a traceback (set TASKZOO_DEBUG=1 to see it).
        if os.environ.get("TASKZOO_DEBUG"):
            raise
        print(f"taskzoo {args.command}: error: {in_cli_syntax(str(error) or type(error).__name__)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"taskzoo {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

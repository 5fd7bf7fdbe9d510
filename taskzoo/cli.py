"""The command line: ``taskzoo tasks | predict | finetune | evaluate | demo``.

Outputs are JSON (one line per input for predict), so they pipe into other tools.
Fine-tuning runs unchanged under ``accelerate launch -m taskzoo.cli finetune ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from taskzoo.errors import TaskzooError


def _value(text: str):
    """A command-line value: JSON when it parses (numbers, lists, dicts, true/false), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str] | None, flag: str) -> dict:
    result = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: {flag} expects KEY=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        result[key.strip()] = value.strip() if flag == "--columns" else _value(value)
    return result


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
    from taskzoo.registry import ALIASES, TASKS

    for name, entry in sorted(TASKS.items()):
        aliases = [alias for alias, target in ALIASES.items() if target == name]
        also = f"  (also: {', '.join(aliases)})" if aliases else ""
        print(f"{name:32} default model: {entry.default_model}{also}")


def cmd_predict(args) -> None:
    import taskzoo
    from taskzoo import batch_predict
    from taskzoo.result_files import json_line

    inputs = [_input(item) for item in args.inputs]
    if args.input_file:
        inputs += _read_inputs(args.input_file)
    if args.data and inputs:
        raise SystemExit("error: give inputs as arguments or --input-file, or rows with --data; not both")
    if not inputs and not args.data:
        raise SystemExit("error: give inputs as arguments, with --input-file, or rows with --data")
    if (args.resume or args.data) and not args.output:
        raise SystemExit(f"error: {'--resume' if args.resume else '--data'} needs --output (a JSON lines file)")
    zoo = taskzoo.load(args.task, args.model, device=args.device)
    options = _pairs(args.set, "--set")
    files = dict(batch_size=args.batch_size, resume=args.resume, save_visuals=args.save_visuals)
    if args.data:
        zoo.predict_to_jsonl(args.data, args.output, columns=_pairs(args.columns, "--columns"),
                             id_column=args.id_column, **files, **options)
    elif args.output:
        batch_predict.write_predictions(zoo, batch_predict.Inputs(inputs), args.output, **files, **options)
    else:
        outputs = zoo.predict(inputs, batch_size=args.batch_size, **options)
        for index, (item, output) in enumerate(zip(inputs, outputs)):
            sys.stdout.write(json_line(zoo, index, {"input": item}, item, output, args.save_visuals))


def cmd_finetune(args) -> None:
    import taskzoo

    flags = dict(output_dir=args.output_dir, epochs=args.epochs, max_steps=args.max_steps,
                 batch_size=args.batch_size, learning_rate=args.learning_rate,
                 mixed_precision=args.mixed_precision, seed=args.seed)
    # Dedicated flags win over the same option given with --set.
    config = {**_pairs(args.set, "--set"), **{key: value for key, value in flags.items() if value is not None}}
    zoo = taskzoo.load(args.task, args.model)
    result = zoo.finetune(args.train, eval=args.eval, columns=_pairs(args.columns, "--columns"), **config)
    print(json.dumps({"output_dir": str(result.output_dir), "steps": result.steps, "metric": result.metric,
                      "best_metric": result.best_metric, "final_metrics": result.final_metrics,
                      "seconds": round(result.seconds, 2)}))


def cmd_evaluate(args) -> None:
    import taskzoo

    zoo = taskzoo.load(args.task, args.model)
    print(json.dumps(zoo.evaluate(args.data, batch_size=args.batch_size,
                                  columns=_pairs(args.columns, "--columns"))))


def cmd_demo(args) -> None:
    from taskzoo.demo import run_demo

    run_demo(args.tasks or None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskzoo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("tasks", help="list the tasks").set_defaults(run=cmd_tasks)

    predict = commands.add_parser("predict", help="predict with a model")
    predict.add_argument("task")
    predict.add_argument("inputs", nargs="*", help="texts, paths, or JSON values (a JSON pair for pairs)")
    predict.add_argument("--model", help="local folder, packaged model or hub id (default: the task's)")
    predict.add_argument("--input-file", help="JSON lines or plain text lines, one input each")
    predict.add_argument("--data", help="predict every row of a CSV / JSON / JSONL / Parquet file or an image, "
                         "audio or COCO folder (streamed; needs --output; see docs/predict.md)")
    predict.add_argument("--output", help="write JSON lines here instead of standard output")
    predict.add_argument("--resume", action="store_true", help="continue an interrupted --output file")
    predict.add_argument("--id-column", help="with --data: the column copied into each line (default: id)")
    predict.add_argument("--columns", action="append", metavar="YOURS=TASKS", help="with --data: rename a column")
    predict.add_argument("--save-visuals", metavar="DIR", help="write output images (generated images, "
                         "masks, drawings of boxes) as PNG files here; the JSON holds their paths")
    predict.add_argument("--batch-size", type=int)
    predict.add_argument("--device")
    predict.add_argument("--set", action="append", metavar="KEY=VALUE", help="a predict option, e.g. top_k=2")
    predict.set_defaults(run=cmd_predict)

    finetune = commands.add_parser("finetune", help="fine-tune a model")
    finetune.add_argument("task")
    finetune.add_argument("--model")
    finetune.add_argument("--train", required=True, help="CSV / JSON / JSONL / Parquet file or folder")
    finetune.add_argument("--eval")
    finetune.add_argument("--output-dir", required=True)
    finetune.add_argument("--epochs", type=float)
    finetune.add_argument("--max-steps", type=int)
    finetune.add_argument("--batch-size", type=int)
    finetune.add_argument("--learning-rate", type=float)
    finetune.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    finetune.add_argument("--seed", type=int)
    finetune.add_argument("--columns", action="append", metavar="YOURS=TASKS", help="rename a column")
    finetune.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other finetune option")
    finetune.set_defaults(run=cmd_finetune)

    evaluate = commands.add_parser("evaluate", help="evaluate a model on labelled data")
    evaluate.add_argument("task")
    evaluate.add_argument("--model")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--batch-size", type=int)
    evaluate.add_argument("--columns", action="append", metavar="YOURS=TASKS")
    evaluate.set_defaults(run=cmd_evaluate)

    demo = commands.add_parser("demo", help="offline tour: tiny models, toy data, fine-tune each task")
    demo.add_argument("tasks", nargs="*", help="only these tasks (default: all)")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from taskzoo.demo import quiet_libraries

    parser = build_parser()
    # argparse gives a positional list nothing once an option came between (`predict TASK --model M x`):
    # collect those leftovers as predict inputs instead of refusing them.
    args, leftovers = parser.parse_known_args(argv)
    if leftovers and (args.command != "predict" or any(item.startswith("--") for item in leftovers)):
        parser.error(f"unrecognized arguments: {' '.join(leftovers)}")
    if leftovers:
        args.inputs += leftovers
    quiet_libraries()
    try:
        args.run(args)
    except (TaskzooError, ValueError, TypeError) as error:
        # Errors taskzoo raises on purpose already say what to do: print them without a traceback
        # (set TASKZOO_DEBUG=1 to see it).
        if os.environ.get("TASKZOO_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The contract every task fills, and the shared API built on it (docs/custom-tasks.md is the guide).

What a task must write is abstract here, and a class that lacks any of it is refused, naming what is missing,
when it is registered or instantiated: ``name``, ``primary_metric`` and the "required hooks" section. The rest
has defaults, grouped: loading, data, evaluation, predict, training, feature cache, testing kit, and (in
task_facts.py) the facts that serving, the playground, result files and the demo read. Predict's options are
the keyword parameters of ``preprocess_batch`` and ``predict_batch``, and each stage gets those it names, as
transformers' pipelines route theirs with ``_sanitize_parameters`` (taskzoo/predict_options.py). The shared
predict, evaluate and finetune live here, in predict_batches.py, evaluation.py and training.py.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from taskzoo import data as data_utils, strategies, streaming
from taskzoo.accelerators import default_device
from taskzoo.errors import warn_at_caller
from taskzoo.export.hooks import Exportable
from taskzoo.models import library_bars_hidden
from taskzoo.predict_batches import predict_in_batches
from taskzoo.predict_options import check_options
from taskzoo.task_facts import TaskFacts
from taskzoo.task_warnings import TaskWarnings


class Task(Exportable, TaskFacts, TaskWarnings, ABC):  # export() and its hooks: taskzoo/export/hooks.py
    name: ClassVar[str]
    primary_metric: ClassVar[str]
    greater_is_better: ClassVar[bool] = True
    required_columns: ClassVar[tuple[str, ...]] = ()
    default_batch_size: ClassVar[int] = 8
    default_learning_rate: ClassVar[float] = 5e-5
    # What its models take ("text", "image", "audio", "pipeline") and which it loads: see models.wrong_model.
    modality: ClassVar[str | None] = None
    model_needs: ClassVar[str] = ""

    def __init__(self, model: torch.nn.Module, processor: Any = None, *, source: str | None = None,
                 device: str | torch.device | None = None, new_weights: Iterable[str] = ()):
        if self.unwritten():  # (abstract hooks are refused before __init__: this names the attributes)
            raise TypeError(f"{type(self).__name__} does not set {', '.join(self.unwritten())}, as a task must.")
        self.model = model  # the nn.Module that fine-tuning trains
        self.processor = processor  # tokenizer / image processor / feature extractor, or None
        self.source = source  # the folder it was loaded from
        self.new_weights = tuple(sorted(new_weights))  # head weights the checkpoint lacked: newly initialised
        self.head_trained = not self.new_weights
        self.device = torch.device(device) if device is not None else default_device()
        self.model.to(self.device).eval()
        # finetune()'s task options, this model's own: the class defaults until finetune() sets the run's.
        self.training_options = dict(self.finetune_options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, device={self.device})"

    @classmethod
    def unwritten(cls) -> list[str]:
        """The required attributes and hooks that ``cls`` lacks: none for a task that can be used."""
        return ([name for name in ("name", "primary_metric") if not hasattr(cls, name)]
                + sorted(getattr(cls, "__abstractmethods__", ())))

    # ----------------------------------------------------------------------------------- required hooks
    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | os.PathLike, **options) -> Task:
        """Load the model (and processor) from a local folder; return ``cls(model, processor, source=str(path),
        device=device, new_weights=...)`` (``new_weights``: head weights the folder lacked)."""

    @abstractmethod
    def collate(self, examples: list[dict]) -> dict:
        """A list of prepared rows -> a batch of tensors, for training and evaluation."""

    @abstractmethod
    def training_step(self, model: torch.nn.Module, batch: dict) -> dict:
        """``{"loss": tensor, "output": ...}`` for one batch: the only thing the training loop calls."""

    @abstractmethod
    def eval_step(self, model: torch.nn.Module, batch: dict) -> tuple[list, list]:
        """``(predictions, references)`` for one batch: two lists with one item per sample."""

    @abstractmethod
    def compute_metrics(self, predictions: list, references: list) -> dict[str, float]:
        """``{metric: float}`` over eval_step's gathered lists, the primary metric included."""

    @abstractmethod
    def input_of(self, row: dict) -> Any:
        """The predict() input of a dataset row (predict_to_jsonl, the demo, docs and tests use it)."""

    @abstractmethod
    def predict_batch(self, inputs: Any) -> list:
        """What ``preprocess_batch`` made of a list of inputs -> one output each (forward, then postprocess).
        Predict's options for it are its keyword parameters (``top_k: int = 5``, say); a ``**kwargs`` also
        takes the options no stage names (those passed on to ``generate()``)."""

    # --------------------------------------------------------------------------- loading (optional)
    @library_bars_hidden()
    def save(self, path: str | os.PathLike) -> Path:
        """Write a normal HF folder that ``taskzoo.load(task, model=path)`` and the plain library loaders open.

        Args:
            path: The folder, for the model (LoRA adapters merged unless ``save_merged=False``) and processor.

        Returns:
            ``path``, as a Path.
        """
        if self.exported:  # an export is saved as it is: its folder, copied
            from taskzoo.export.folder import copy_export

            return copy_export(self.source, path)
        self.model_to_save().save_pretrained(path)
        self.processor.save_pretrained(path)
        return Path(path)

    # ------------------------------------------------------------------------------ data (optional)
    def read_path(self, path: str | os.PathLike):
        """Read data from a path. Tasks that accept folders (images, audio, COCO) override this."""
        return data_utils.read_table(path)

    def load_data(self, data: Any, role: str = "eval", columns: Mapping[str, str] | None = None):
        """User data -> a checked, prepared Dataset for ``role`` ("train" or "eval"), or None."""
        dataset = data_utils.pick_split(data_utils.to_dataset(data, self.read_path), role)
        if dataset is None:
            return None
        dataset = data_utils.rename_columns(dataset, columns)
        data_utils.check_columns(dataset, self.required_columns, self.name, where=f"{role} data")
        return dataset

    def prepare(self, dataset, training: bool):
        """Check values and convert them for this model. Default: unchanged."""
        return dataset

    def prepared(self, dataset, training: bool):
        """``prepare`` for in-memory data; a stream (IterableDataset) gets it on small chunks as they are read
        (a task whose prepare decides from the whole data overrides this for streams)."""
        return streaming.prepare_in_chunks(self, dataset, training) if streaming.is_stream(dataset) \
            else self.prepare(dataset, training)

    def train_lengths(self, dataset) -> list[int] | None:
        """Sizes of the training rows, for batches of similar length; None (the default): plain shuffling."""
        return None

    def prepare_for_training(self, dataset) -> None:
        """Adapt the model to the training data before the loop starts. Default: nothing to do."""

    # ------------------------------------------------------------------------- evaluation (optional)
    keep_metric_inputs: bool = False  # see keeping_metric_inputs

    @contextmanager
    def keeping_metric_inputs(self):
        """While your metrics are scored, an eval_step that returns a summary per sample (a confusion matrix,
        a loss) also returns what metric_inputs needs (label maps, rendered images)."""
        self.keep_metric_inputs = True
        try:
            yield
        finally:
            self.keep_metric_inputs = False

    def metric_inputs(self, predictions: list, references: list) -> tuple[list, list]:
        """What your metrics (``metrics=``) receive: eval_step's gathered lists in the task's natural form, one
        item per example (each task's page says which). Default: as eval_step gives them."""
        return predictions, references

    # --------------------------------------------------------------------------- predict (optional)
    def is_single(self, inputs: Any) -> bool:
        """Whether ``inputs`` is one input (-> one output) rather than a list of inputs."""
        return not isinstance(inputs, (list, tuple))

    def input_kind(self, item: Any) -> str:
        """What kind of input ``item`` is; a list that mixes kinds is refused. Default: one kind."""
        return "input"

    def input_length(self, item: Any) -> int:
        """A cheap size estimate used to group similar inputs into batches (less padding)."""
        return 0

    def preprocess_batch(self, inputs: list) -> Any:
        """Inputs -> what ``predict_batch`` takes (decoded, resized, as tensors). The predict options it takes
        are its keyword parameters (``sampling_rate=None``, say). With ``predict(num_workers=N)`` it runs in
        worker processes, a few batches ahead of the model, so it must not touch the model. Default: the
        inputs unchanged."""
        return inputs

    def compile_target(self) -> tuple[Any, str] | None:
        """Where the module that predict's forward passes call sits, as ``(owner, attribute name)``, for
        ``predict(compile=True)``; None where predict cannot be compiled. Default: ``self.model``."""
        return self, "model"

    # ------------------------------------------------------------------------------ predict (shared)
    def predict(self, inputs: Any, batch_size: int | None = None, progress: bool | None = None,
                mixed_precision: str = "no", compile: bool = False, num_workers: int = 0, **options) -> Any:
        """Predict one input or a list of inputs.

        Args:
            inputs: One input, in the task's form (a string, an image, an audio file, ...), or a list of them.
            batch_size: Inputs per forward pass (length-sorted batches); None: the task's default.
            progress: Show a progress bar; None: where there are more than 10 batches.
            mixed_precision: ``"bf16"`` or ``"fp16"`` (opt-in) runs the forward passes under autocast: several
                times faster with bf16 matrix units (CPU or GPU), scores differing in the third decimal.
            compile: Run them through ``torch.compile`` (opt-in; the first call compiles for tens of seconds).
            num_workers: Processes that decode and preprocess the next batches (images, audio) as the model runs.
            **options: The task's own options (``top_k``, ``max_new_tokens``, ...; docs/tasks/).

        Returns:
            One output for one input; for a list, a list of outputs in input order.

        Raises:
            ValueError: An input of the wrong kind, or an unknown option or bad value (the message names it).
        """
        return predict_in_batches(self, inputs, batch_size, progress, mixed_precision, compile, num_workers, options)

    def predict_to_jsonl(self, data: Any, output: str | os.PathLike, **options) -> Path:
        """Predict every row of ``data`` into ``output``, under ``accelerate launch`` too; see docs/predict.md.

        Args:
            data: A data file or folder of any size, a Dataset, an IterableDataset or a list of dicts.
            output: The JSON lines file: ``{"index", "id", "output"}`` per row, in input order.
            **options: ``batch_size``, ``columns``, ``id_column``, ``resume`` (go on after the rows already
                there), ``save_visuals`` (a folder for drawings), ``progress``, and predict's own options.

        Returns:
            ``output``, as a Path.

        Raises:
            DataError: A row lacks a column or its value is bad, or ``resume`` finds lines it cannot go on from.
        """
        from taskzoo.predict_files import predict_to_jsonl

        return predict_to_jsonl(self, data, output, **options)

    def autocast(self, mixed_precision: str):
        """The autocast context for predict's opt-in mixed precision ("no" leaves it off)."""
        if mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16'; got {mixed_precision!r}.")
        if mixed_precision != "no":
            self.refuse_if_exported(f"mixed_precision={mixed_precision!r} is for")
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if mixed_precision == "bf16"
                              else torch.float16, enabled=mixed_precision != "no")

    def compiled(self, enabled: bool = True):
        """Within this context the compile target is its ``torch.compile``'d version (made once, then kept;
        see :func:`taskzoo.compiling.compiled`)."""
        from taskzoo.compiling import compiled

        if enabled:  # ONNX Runtime already runs an optimized graph
            self.refuse_if_exported("compile=True is for")
        return compiled(self, enabled)

    def check_batch_size(self, batch_size: int | None) -> int:
        check_options(self, {"batch_size": batch_size})
        return self.default_batch_size if batch_size is None else batch_size

    def check_inputs(self, items: list) -> None:
        kinds = {}
        for position, item in enumerate(items):
            kinds.setdefault(self.input_kind(item), position)
        if len(kinds) > 1:
            described = ", ".join(f"{kind} (first at position {position})" for kind, position in kinds.items())
            raise ValueError(f"{self.name}: one call mixes kinds of input: {described}. "
                             "Predict each kind in its own call.")

    # ------------------------------------------------------------------- evaluate / finetune (shared)
    @library_bars_hidden()
    def evaluate(self, data: Any, batch_size: int | None = None, columns: Mapping[str, str] | None = None,
                 mixed_precision: str = "no", metrics: Any = None) -> dict[str, float]:
        """Score the model on labelled data.

        Args:
            data: A Dataset, DatasetDict (its validation, else test, split), file or folder path, or list of dicts.
            batch_size: Samples per forward pass; None: the task's default.
            columns: ``{your column: the task's}`` renames, e.g. ``{"review": "text"}``.
            mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``, as in :meth:`predict`.
            metrics: Your own metrics, scored next to the task's (:mod:`taskzoo.custom_metrics`).

        Returns:
            ``{metric name: value}``, the task's primary metric included.

        Raises:
            DataError: A column is missing or a value is bad (the message names it), or the data is empty.
            MetricError: One of your metrics failed; ``.metrics`` holds what was computed.
        """
        from taskzoo.evaluation import evaluate_task

        return evaluate_task(self, data, batch_size, columns, mixed_precision, metrics)

    @library_bars_hidden()
    def finetune(self, train: Any, eval: Any = None, columns: Mapping[str, str] | None = None, **config):
        """Fine-tune on ``train`` with the shared Accelerate loop (``accelerate launch`` runs it unchanged).

        Args:
            train: A Dataset, IterableDataset, DatasetDict (its train split), file or folder path, or list of dicts.
            eval: Data to evaluate on, in the same forms; None: a DatasetDict's validation (or test) split, if any.
            columns: ``{your column: the task's}`` renames, for ``train`` and ``eval``.
            **config: :class:`taskzoo.training.TrainingConfig`'s fields (``epochs``, ``learning_rate``,
                ``output_dir``, ``strategy``, ``metrics``: yours, logged if they fail) and ``finetune_options``.

        Returns:
            A :class:`taskzoo.training.TrainingResult`: steps, metrics, history, best checkpoint.

        Raises:
            TypeError: An option that neither TrainingConfig nor the task has (the message suggests one).
            DataError: A column is missing or a value is bad (the message names it).
            ExistingRunError: ``output_dir`` holds an earlier run: resume it or pass ``overwrite=True``.
            TrainingError: Fine-tuning cannot go on (the loss became NaN, say).
            TrainingInterrupted: Ctrl-C; the message says how to resume from the last checkpoint.
        """
        from taskzoo.training import finetune_task

        self.refuse_if_exported("fine-tune")
        return finetune_task(self, train, eval, columns, config)

    # ---------------------------------------------------------------------------- training (optional)
    # Task-specific finetune() options and their defaults (EMA for diffusion, say), read from
    # self.training_options inside training_step and the hooks below. Subclasses extend it in a dict of their own.
    finetune_options: ClassVar[Mapping[str, Any]] = MappingProxyType({
        "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,  # strategy="lora"
        "save_merged": True,  # after LoRA, save() writes a merged plain model (False: the adapters alone)
        "cache_features": True,  # strategy="freeze": run the frozen body once, train the head from a cache
    })
    supported_strategies: ClassVar[tuple[str, ...]] = ("full", "freeze", "lora")  # what finetune(strategy=) may be
    # Options renamed (old -> new) that load, predict and finetune still take, with a warning, for one release.
    renamed_options: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "strategies" in cls.__dict__:  # the old name of supported_strategies, taken for one release
            warn_at_caller(f"{cls.__name__}.strategies is renamed supported_strategies; the old name goes in the "
                           "next release.")
            cls.supported_strategies = cls.__dict__["strategies"]
            del cls.strategies

    @property
    def strategies(self) -> tuple[str, ...]:
        warn_at_caller(".strategies is renamed .supported_strategies; the old name goes in the next release.")
        return self.supported_strategies

    def head_modules(self) -> list[str]:
        """Top-level modules of the task head (what strategy="freeze" trains)."""
        return strategies.head_modules(self.model)

    def apply_strategy(self, strategy: str) -> None:
        """Choose what trains: everything, the head alone, or LoRA adapters plus the head."""
        if strategy not in self.supported_strategies:
            raise ValueError(f"{self.name} supports strategy {' or '.join(map(repr, self.supported_strategies))}; "
                             f"got {strategy!r}.")
        options = self.training_options
        self.model = strategies.without_adapters(self.model)  # (after a LoRA run) the head is told on the plain model
        # Only freeze and LoRA need to tell the head from the body: "full" trains any architecture.
        head = [] if strategy == "full" else self.head_modules()
        self.model = strategies.apply(self.model, strategy, head, rank=options["lora_rank"],
                                      alpha=options["lora_alpha"], dropout=options["lora_dropout"])
        self.model.to(self.device)

    def model_to_save(self) -> torch.nn.Module:
        """The model that save() writes: LoRA adapters merged in unless save_merged=False."""
        return strategies.exportable(self.model, merged=self.training_options.get("save_merged", True))

    def on_optimizer_step(self, model: torch.nn.Module) -> None:
        """Called after every optimizer step (EMA updates, say). Default: nothing."""

    def on_evaluate(self, model: torch.nn.Module, output_dir: Path, step: int) -> None:
        """Called on the main process after each evaluation during fine-tuning (render samples, say)."""

    def frozen_parts(self, device: torch.device, dtype: torch.dtype | None):
        """A context manager around the fine-tuning loop for modules the task uses but does not train, kept out
        of ``self.model`` so that Accelerate neither wraps nor checkpoints them (a diffusion pipeline's VAE and
        text encoders): within it they sit on ``device``, in the mixed-precision ``dtype`` (None: as they
        are). Default: there are none."""
        return nullcontext()

    # ---------------------------------------------------------------------- feature cache (optional)
    cached_head: ClassVar[str | None] = None  # the one module whose input cache_features caches (a head), or None

    # ------------------------------------------------------------------------ testing kit (optional)
    # Settings with which `taskzoo demo` (and the tests) fine-tune the tiny model on the toy data.
    demo_config: ClassVar[dict] = dict(train_size=256, eval_size=64, epochs=3, learning_rate=3e-3, batch_size=16)

    @staticmethod
    def tiny_model(path: str | os.PathLike) -> Path:
        """Build and save a tiny random model of this task's architecture family; returns its folder."""
        raise NotImplementedError("This task has no testing kit: its class writes no tiny_model(path).")

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0):
        """A learnable synthetic dataset for this task, as a datasets.Dataset."""
        raise NotImplementedError("This task has no testing kit: its class writes no toy_dataset(n, seed).")

"""The contract every task fills, and the shared API built on it.

A task file subclasses :class:`Task` and fills in:

- ``from_pretrained(path, **options)``: load model and processor from a local folder;
- ``save(path)``: write a normal HF folder that the plain library loaders open;
- ``required_columns`` and ``prepare(dataset, training)``: check values and convert them (labels to ids);
- ``prepare_for_training(dataset)``: optional, adapt the model to the data (a new classification head);
- ``collate(examples)``: a list of rows -> a batch of tensors, used for training and evaluation;
- ``training_step(model, batch)`` -> ``{"loss": tensor, "output": ...}``: the only thing the loop calls;
- ``eval_step(model, batch)`` -> ``(predictions, references)``, two lists with one item per sample;
- ``compute_metrics(predictions, references)`` -> ``{metric: float}``, the primary metric included;
- ``metric_inputs(predictions, references)``: eval_step's results in the form your own metrics receive
  (``metrics=``); where eval_step keeps only a summary, it keeps more while ``keep_metric_inputs`` is True;
- ``is_single(x)`` and ``predict_batch(batch, **options)``: forward -> postprocess, on what
  ``preprocess_batch(inputs, **options)`` made of the inputs (optional: decode, resize; it may run in
  worker processes); ``compile_target()`` names the module ``predict(compile=True)`` compiles;
- ``tiny_model(path)`` and ``toy_dataset(n, seed)``: the testing kit (see taskzoo/testing.py).

Everything else (predict's batching, evaluate, finetune) is shared and lives here, in evaluation.py
and in training.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from taskzoo import data as data_utils
from taskzoo import strategies, streaming
from taskzoo.batching import PreparedBatches, halving_on_oom
from taskzoo.errors import DataError, warn_at_caller
from taskzoo.export.hooks import Exportable
from taskzoo.models import library_bars_hidden


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def check_device(device: str | torch.device | None) -> None:
    """Refuse, in one line and before anything loads, a device torch cannot use here."""
    if device is None:
        return
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={str(device)!r} is not a device torch knows: use 'cpu', 'cuda', 'cuda:1', "
                         "'mps', ...") from None
    if found.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}, but torch {torch.__version__} sees no CUDA GPU here "
                         "(torch.cuda.is_available() is False): install a CUDA build of torch, or use 'cpu'.")
    if found.type == "cuda" and found.index is not None and found.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device={str(device)!r}, but this machine has {count} GPU(s): cuda:0 to cuda:{count - 1}.")
    if found.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r}, but torch sees no Apple GPU (MPS) here; use 'cpu'.")


class Task(Exportable):  # export() and its hooks: taskzoo/export/hooks.py
    name: ClassVar[str]
    primary_metric: ClassVar[str]
    greater_is_better: ClassVar[bool] = True
    required_columns: ClassVar[tuple[str, ...]] = ()
    default_batch_size: ClassVar[int] = 8
    default_learning_rate: ClassVar[float] = 5e-5

    def __init__(self, model: torch.nn.Module, processor: Any = None, *, source: str | None = None,
                 device: str | torch.device | None = None):
        self.model = model  # the nn.Module that fine-tuning trains
        self.processor = processor  # tokenizer / image processor / feature extractor, or None
        self.source = source  # the folder it was loaded from
        self.device = torch.device(device) if device is not None else default_device()
        self.model.to(self.device).eval()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, device={self.device})"

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **options) -> Task:
        raise NotImplementedError

    @library_bars_hidden()
    def save(self, path: str | os.PathLike) -> Path:
        """Write a normal HF folder: the model (LoRA adapters merged unless save_merged=False) and its
        processor, which the plain library loaders open. Tasks with more to write override this."""
        if self.exported:  # an export is saved as it is: its folder, copied
            from taskzoo.export.folder import copy_export

            return copy_export(self.source, path)
        self.model_to_save().save_pretrained(path)
        self.processor.save_pretrained(path)
        return Path(path)

    # --------------------------------------------------------------------------------------- data
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

    # ------------------------------------------------------------------------- training contract
    def collate(self, examples: list[dict]) -> dict:
        raise NotImplementedError

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict:
        raise NotImplementedError

    def eval_step(self, model: torch.nn.Module, batch: dict) -> tuple[list, list]:
        raise NotImplementedError

    def compute_metrics(self, predictions: list, references: list) -> dict[str, float]:
        raise NotImplementedError

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

    # ------------------------------------------------------------------------------------ predict
    def is_single(self, inputs: Any) -> bool:
        """Whether ``inputs`` is one input (-> one output) rather than a list of inputs."""
        return not isinstance(inputs, (list, tuple))

    def predict_batch(self, inputs: list, **options) -> list:
        raise NotImplementedError

    def input_of(self, row: dict) -> Any:
        """The predict() input that corresponds to a dataset row (used by the demo, docs and tests)."""
        raise NotImplementedError

    def input_length(self, item: Any) -> int:
        """A cheap size estimate used to group similar inputs into batches (less padding)."""
        return 0

    def preprocess_batch(self, inputs: list, **options) -> Any:
        """Inputs -> what ``predict_batch`` takes (decoded, resized, as tensors). It gets the same options
        as ``predict_batch``. With ``predict(num_workers=N)`` it runs in worker processes, a few batches
        ahead of the model, so it must not touch the model. Default: the inputs unchanged."""
        return inputs

    def predict(self, inputs: Any, batch_size: int | None = None, progress: bool | None = None,
                mixed_precision: str = "no", compile: bool = False, num_workers: int = 0, **options) -> Any:
        """Predict one input or a list of inputs. One input gives one output, a list gives a list.

        ``mixed_precision="bf16"`` (opt-in) runs the forward passes under bf16 autocast: several times
        faster on CPUs and GPUs with bf16 matrix units, with scores that differ in the third decimal.
        ``compile=True`` (opt-in) runs them through ``torch.compile``: the first call spends tens of
        seconds compiling, so it pays off on long runs (see :meth:`compiled`). ``num_workers=N`` decodes
        and preprocesses the next batches in N processes while the model runs (images and audio): it
        helps where decoding is a large share of the time and there are cores to spare.
        """
        autocast = self.autocast(mixed_precision)
        single = self.is_single(inputs)
        items = [inputs] if single else list(inputs)
        if not items:
            return []
        batch_size = self.check_batch_size(batch_size)
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer; got {num_workers!r}.")
        self.check_inputs(items)
        # Length-sorted batches pad less; outputs are put back in input order below.
        order = sorted(range(len(items)), key=lambda i: self.input_length(items[i]), reverse=True)
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        outputs: list[Any] = [None] * len(items)
        bar = tqdm(total=len(items), desc=f"{self.name}: predict", unit="input",
                   disable=not (progress if progress is not None else len(batches) > 10))
        prepared = PreparedBatches(self, items, batches, options, num_workers)
        if any(module.training for module in self.model.modules()):
            self.model.eval()  # ~2 ms a call for MiniLM (transformers' train() override); the flag scan is cheap
        # no_grad, not inference_mode: tensors a model caches during predict (BEiT's relative position index,
        # say) must stay usable when it trains later in the same process (transformers' pipeline does the same).
        with torch.no_grad(), autocast, self.compiled(compile):
            for indices, results in halving_on_oom(self, prepared, lambda batch: self.predict_batch(batch, **options)):
                for index, result in zip(indices, results):
                    outputs[index] = result
                bar.update(len(indices))
        bar.close()
        self.warn_truncated("predict")
        return outputs[0] if single else outputs

    def predict_to_jsonl(self, data: Any, output: str | os.PathLike, **options) -> Path:
        """Predict every row of ``data`` (a data file or folder of any size, a Dataset, an IterableDataset or
        a list of dicts) into ``output``: one JSON line ``{"index", "id", "output"}`` per row, in input order;
        resumable, and shared by the processes of ``accelerate launch``. Options: ``batch_size``, ``columns``,
        ``id_column``, ``resume``, ``save_visuals``, ``progress`` and predict's own. See docs/predict.md."""
        from taskzoo.batch_predict import predict_to_jsonl

        return predict_to_jsonl(self, data, output, **options)

    def autocast(self, mixed_precision: str):
        """The autocast context for predict's opt-in mixed precision ("no" leaves it off)."""
        if mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16'; got {mixed_precision!r}.")
        if mixed_precision != "no":
            self.refuse_if_exported(f"mixed_precision={mixed_precision!r} is for")
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if mixed_precision == "bf16"
                              else torch.float16, enabled=mixed_precision != "no")

    def compile_target(self) -> tuple[Any, str] | None:
        """Where the module that predict's forward passes call sits, as ``(owner, attribute name)``, for
        ``predict(compile=True)``; None where predict cannot be compiled. Default: ``self.model``."""
        return self, "model"

    def compiled(self, enabled: bool = True):
        """Within this context the compile target is its ``torch.compile``'d version (made once, then kept;
        see :func:`taskzoo.compiling.compiled`)."""
        from taskzoo.compiling import compiled

        if enabled:  # ONNX Runtime already runs an optimized graph
            self.refuse_if_exported("compile=True is for")
        return compiled(self, enabled)

    def check_batch_size(self, batch_size: int | None) -> int:
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        return batch_size

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

    def input_kind(self, item: Any) -> str:
        """What kind of input ``item`` is; a list that mixes kinds is refused. Default: one kind."""
        return "input"

    def check_inputs(self, items: list) -> None:
        kinds = {}
        for position, item in enumerate(items):
            kinds.setdefault(self.input_kind(item), position)
        if len(kinds) > 1:
            described = ", ".join(f"{kind} (first at position {position})" for kind, position in kinds.items())
            raise ValueError(f"{self.name}: one call mixes kinds of input: {described}. "
                             "Predict each kind in its own call.")

    # --------------------------------------------------------------------------- evaluate / tune
    @library_bars_hidden()
    def evaluate(self, data: Any, batch_size: int | None = None, columns: Mapping[str, str] | None = None,
                 mixed_precision: str = "no", metrics: Any = None) -> dict[str, float]:
        """Score the model on labelled data; returns ``{metric: value}`` with the primary metric, and with
        your own ``metrics`` (see :mod:`taskzoo.custom_metrics`; one that fails raises ``MetricError``)."""
        from taskzoo.custom_metrics import MetricSet
        from taskzoo.evaluation import evaluate_task

        metrics = MetricSet.of(metrics)  # scripts load (and bad items are refused) before any work
        dataset = self.load_data(data, "eval", columns)
        if dataset is None:
            raise DataError("The DatasetDict has no validation or test split to evaluate on.")
        dataset = self.prepared(dataset, training=False)
        scores = evaluate_task(self, dataset, batch_size=batch_size or self.default_batch_size,
                               mixed_precision=mixed_precision, metrics=metrics)
        self.warn_truncated("evaluate")
        return scores

    @library_bars_hidden()
    def finetune(self, train: Any, eval: Any = None, columns: Mapping[str, str] | None = None, **config):
        """Fine-tune on ``train`` (evaluating on ``eval``) with the shared Accelerate loop.

        ``config`` takes the fields of :class:`taskzoo.training.TrainingConfig` (epochs, learning_rate,
        output_dir, strategy, metrics, ...) and the task's own ``finetune_options``; a metric of yours that
        fails is logged and the run goes on. Returns a
        :class:`taskzoo.training.TrainingResult`. With a DatasetDict and no ``eval``, its validation
        (or test) split is used for evaluation.
        """
        from datasets import DatasetDict

        from taskzoo.training import TrainingConfig, train_task

        self.refuse_if_exported("fine-tune")
        self.__dict__.pop("_compiled", None)  # its frozen weights would go stale (see compiled())
        own = {key: config.pop(key) for key in list(config) if key in self.finetune_options}
        self.training_options = {**self.finetune_options, **own}
        config = TrainingConfig.from_kwargs(self, **config)
        loaded = data_utils.to_dataset(train, self.read_path)
        train_set = self.load_data(loaded, "train", columns)
        streaming.check_trainable(train_set, config.max_steps)
        if eval is None:
            splits = isinstance(loaded, (DatasetDict, streaming.IterableDatasetDict))
            eval_set = self.load_data(loaded, "eval", columns) if splits else None
        else:
            eval_set = self.load_data(eval, "eval", columns)
        torch.manual_seed(config.seed)  # a new head (or adapters) starts the same for the same seed
        self.prepare_for_training(train_set)
        self.apply_strategy(config.strategy)
        train_set = self.prepared(train_set, training=True)
        eval_set = self.prepared(eval_set, training=False) if eval_set is not None else None
        trainer = self  # (a stream is never held in memory, so its features are not cached)
        if config.strategy == "freeze" and self.cached_head and self.training_options.get("cache_features") \
                and not streaming.is_stream(train_set):
            from taskzoo.feature_cache import CachedHeadTraining, build_cache

            batch_size = config.eval_batch_size or config.batch_size
            train_set = build_cache(self, train_set, batch_size)
            if eval_set is not None and not streaming.is_stream(eval_set):  # evaluated each epoch: cached too
                eval_set = build_cache(self, eval_set, batch_size)
            trainer = CachedHeadTraining(self)
        result = train_task(trainer, train_set, eval_set, config)
        self.warn_truncated("finetune")
        result.task = self
        return result

    # Task-specific finetune() options and their defaults (EMA for diffusion, say), read from
    # self.training_options inside training_step and the hooks below. Subclasses extend this dict.
    finetune_options: ClassVar[dict[str, Any]] = {
        "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,  # strategy="lora"
        "save_merged": True,  # after LoRA, save() writes a merged plain model (False: the adapters alone)
        "cache_features": True,  # strategy="freeze": run the frozen body once, train the head from a cache
    }
    # The single module whose input is cached for cache_features (a classification head), or None.
    cached_head: ClassVar[str | None] = None
    training_options: dict[str, Any] = finetune_options
    strategies: ClassVar[tuple[str, ...]] = ("full", "freeze", "lora")

    def head_modules(self) -> list[str]:
        """Top-level modules of the task head (what strategy="freeze" trains)."""
        return strategies.head_modules(self.model)

    def apply_strategy(self, strategy: str) -> None:
        """Choose what trains: everything, the head alone, or LoRA adapters plus the head."""
        if strategy not in self.strategies:
            raise ValueError(f"{self.name} supports strategy {' or '.join(map(repr, self.strategies))}; "
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

    # ------------------------------------------------------------------------------ testing kit
    # Settings with which `taskzoo demo` (and the tests) fine-tune the tiny model on the toy data.
    demo_config: ClassVar[dict] = dict(train_size=256, eval_size=64, epochs=3, learning_rate=3e-3, batch_size=16)

    @staticmethod
    def tiny_model(path: str | os.PathLike) -> Path:
        """Build and save a tiny random model of this task's architecture family; returns its folder."""
        raise NotImplementedError

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0):
        """A learnable synthetic dataset for this task, as a datasets.Dataset."""
        raise NotImplementedError

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
- ``is_single(x)`` and ``predict_batch(batch, **options)``: forward -> postprocess, on what
  ``preprocess_batch(inputs, **options)`` made of the inputs (optional: decode, resize; it may run in
  worker processes); ``compile_target()`` names the module ``predict(compile=True)`` compiles;
- ``tiny_model(path)`` and ``toy_dataset(n, seed)``: the testing kit (see taskzoo/testing.py).

Everything else (predict's batching, evaluate, finetune) is shared and lives here, in evaluation.py
and in training.py.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from taskzoo import data as data_utils
from taskzoo import strategies
from taskzoo.errors import DataError


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class Task:
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

    def save(self, path: str | os.PathLike) -> Path:
        """Write a normal HF folder: the model (LoRA adapters merged unless save_merged=False) and its
        processor, which the plain library loaders open. Tasks with more to write override this."""
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
        if not single:
            self.check_inputs(items)
        # Length-sorted batches pad less; outputs are put back in input order below.
        order = sorted(range(len(items)), key=lambda i: self.input_length(items[i]), reverse=True)
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        outputs: list[Any] = [None] * len(items)
        bar = tqdm(total=len(items), desc=f"{self.name}: predict", unit="input",
                   disable=not (progress if progress is not None else len(batches) > 10))
        prepared = PreparedBatches(self, items, batches, options, num_workers)
        self.model.eval()
        with torch.inference_mode(), autocast, self.compiled(compile):
            for indices, batch in prepared:
                try:
                    results = self.predict_batch(batch, **options)
                except torch.OutOfMemoryError:
                    if len(indices) == 1:
                        raise
                    # Out of device memory: halve this batch and carry on, rather than lose the run.
                    half = len(indices) // 2
                    prepared.retry(indices[:half], indices[half:])
                    warnings.warn(f"{self.name}: out of memory with a batch of {len(indices)}; "
                                  f"retrying as two batches of {half} and {len(indices) - half}.")
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
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
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if mixed_precision == "bf16"
                              else torch.float16, enabled=mixed_precision != "no")

    def compile_target(self) -> tuple[Any, str] | None:
        """Where the module that predict's forward passes call sits, as ``(owner, attribute name)``, for
        ``predict(compile=True)``; None where predict cannot be compiled. Default: ``self.model``."""
        return self, "model"

    @contextmanager
    def compiled(self, enabled: bool = True):
        """Within this context the compile target is its ``torch.compile``'d version (made once, then kept).

        Inductor's freezing folds the weights into the compiled code as constants (bf16 weights are cast
        once, CPU matrices are pre-packed), so the compiled version is dropped whenever the weights can
        change: fine-tuning clears it, and a replaced model is compiled afresh.
        """
        if not enabled:
            yield
            return
        target = self.compile_target()
        if target is None:
            raise ValueError(f"{self.name}: compile=True is not supported for this model: its predict generates "
                             "step by step, which torch.compile would recompile for every length.")
        owner, attribute = target
        module = getattr(owner, attribute)
        if self.device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++",
                                                                            "clang++")):
            raise RuntimeError("compile=True on CPU needs a C++ compiler (g++ or clang++), and none was found; "
                               "install one or predict without compile.")
        cached = self.__dict__.get("_compiled")
        if cached is None or cached[0] is not module:
            cached = self._compiled = (module, torch.compile(module, options={"freezing": True}))
        setattr(owner, attribute, cached[1])
        try:
            yield
        finally:
            setattr(owner, attribute, module)

    def check_batch_size(self, batch_size: int | None) -> int:
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        return batch_size

    def count_truncated(self, count: int) -> None:
        """Tasks call this when they cut inputs to the model's maximum length."""
        self._truncated = getattr(self, "_truncated", 0) + count

    def warn_truncated(self, during: str) -> None:
        """One warning per call, counting the truncated inputs, instead of one per input."""
        count = self.__dict__.pop("_truncated", 0)
        if count:
            warnings.warn(f"{self.name}: {count} input(s) were longer than the model's maximum length and "
                          f"were truncated during {during}.", stacklevel=3)

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
    def evaluate(self, data: Any, batch_size: int | None = None, columns: Mapping[str, str] | None = None,
                 mixed_precision: str = "no") -> dict[str, float]:
        """Score the model on labelled data; returns ``{metric: value}`` with the primary metric."""
        from taskzoo.evaluation import evaluate_task

        dataset = self.load_data(data, "eval", columns)
        if dataset is None:
            raise DataError("The DatasetDict has no validation or test split to evaluate on.")
        dataset = self.prepare(dataset, training=False)
        metrics = evaluate_task(self, dataset, batch_size=batch_size or self.default_batch_size,
                                mixed_precision=mixed_precision)
        self.warn_truncated("evaluate")
        return metrics

    def finetune(self, train: Any, eval: Any = None, columns: Mapping[str, str] | None = None, **config):
        """Fine-tune on ``train`` (evaluating on ``eval``) with the shared Accelerate loop.

        ``config`` takes the fields of :class:`taskzoo.training.TrainingConfig` (epochs, learning_rate,
        output_dir, strategy, ...) and the task's own ``finetune_options``. Returns a
        :class:`taskzoo.training.TrainingResult`. With a DatasetDict and no ``eval``, its validation
        (or test) split is used for evaluation.
        """
        from datasets import DatasetDict

        from taskzoo.training import TrainingConfig, train_task

        self.__dict__.pop("_compiled", None)  # its frozen weights would go stale (see compiled())
        own = {key: config.pop(key) for key in list(config) if key in self.finetune_options}
        self.training_options = {**self.finetune_options, **own}
        config = TrainingConfig.from_kwargs(self, **config)
        loaded = data_utils.to_dataset(train, self.read_path)
        train_set = self.load_data(loaded, "train", columns)
        if eval is None:
            eval_set = self.load_data(loaded, "eval", columns) if isinstance(loaded, DatasetDict) else None
        else:
            eval_set = self.load_data(eval, "eval", columns)
        torch.manual_seed(config.seed)  # a new head (or adapters) starts the same for the same seed
        self.prepare_for_training(train_set)
        self.apply_strategy(config.strategy)
        train_set = self.prepare(train_set, training=True)
        eval_set = self.prepare(eval_set, training=False) if eval_set is not None else None
        trainer = self
        if config.strategy == "freeze" and self.cached_head and self.training_options.get("cache_features"):
            from taskzoo.feature_cache import CachedHeadTraining, build_cache

            train_set = build_cache(self, train_set, config.eval_batch_size or config.batch_size)
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
        self.model = strategies.apply(self.model, strategy, self.head_modules(), rank=options["lora_rank"],
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


class PreparedBatches:
    """predict's batches as ``(indices, preprocessed batch)``, preprocessed in this process or, with
    ``num_workers``, by a DataLoader's worker processes a few batches ahead. Batches halved after running
    out of memory (:meth:`retry`) come next, preprocessed here."""

    def __init__(self, task: Task, items: list, batches: list[list[int]], options: dict, num_workers: int):
        self.task, self.items, self.options, self.retries = task, items, options, []
        if num_workers:
            from torch.utils.data import DataLoader

            # batch_size=None: each element (a list of indices) goes to collate_fn whole.
            self.stream = iter(DataLoader(batches, batch_size=None, num_workers=num_workers,
                                          collate_fn=self.prepare, pin_memory=task.device.type == "cuda"))
        else:
            self.stream = map(self.prepare, batches)

    def prepare(self, indices: list[int]) -> tuple[list[int], Any]:
        return indices, self.task.preprocess_batch([self.items[i] for i in indices], **self.options)

    def retry(self, *batches: list[int]) -> None:
        self.retries[:0] = batches

    def __iter__(self):
        return self

    def __next__(self) -> tuple[list[int], Any]:
        return self.prepare(self.retries.pop(0)) if self.retries else next(self.stream)

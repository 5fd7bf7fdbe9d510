"""Running an export: ONNX Runtime sessions, and the stand-in that takes the torch model's place in a task.

:class:`Session` runs one graph on numpy or torch inputs. :class:`ExportedModel` wraps a session as a
``torch.nn.Module`` without weights: called with the keyword tensors the torch model takes, it returns a
transformers ``ModelOutput`` of torch tensors, so that a task's ``predict_batch`` and ``eval_step`` run on it
unchanged, and ``.to()``, ``.eval()`` and ``.config`` work as they do on the model it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
                "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def onnxruntime():
    """The onnxruntime module; a missing ``export`` extra is named."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"ONNX export and its runtime need {error.name}: pip install 'taskzoo[export]'.") from error
    return onnxruntime


def providers(device: str | torch.device | None = None) -> list:
    """ONNX Runtime's execution providers for ``device``: None takes CUDA where this onnxruntime has it (the
    onnxruntime-gpu package), else the CPU; "cpu" the CPU; "cuda" / "cuda:N" that GPU, refused in one line
    where onnxruntime cannot use one."""
    available = onnxruntime().get_available_providers()
    if device is None:
        return [CUDA, CPU] if CUDA in available else [CPU]
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={str(device)!r} is not a device: use 'cpu', 'cuda' or 'cuda:1'.") from None
    if found.type == "cpu":
        return [CPU]
    if found.type == "cuda":
        if CUDA not in available:
            raise ValueError(f"device={str(device)!r}, but this onnxruntime has no CUDA provider (it has "
                             f"{', '.join(available)}): install onnxruntime-gpu instead of onnxruntime, or use 'cpu'.")
        return [(CUDA, {"device_id": found.index or 0}), CPU]
    raise ValueError(f"device={str(device)!r}: an ONNX export runs on 'cpu' or 'cuda' (ONNX Runtime's providers).")


class Session:
    """One graph in an ONNX Runtime session. ``run`` takes torch tensors or numpy arrays by input name (more
    than the graph needs is fine: an exporter drops inputs a model never reads) and gives numpy arrays by
    output name. Threads: as many as torch uses (``torch.set_num_threads``, ``OMP_NUM_THREADS``)."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None,
                 threads: int | None = None):
        ort = onnxruntime()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings name internal nodes
        self.session = ort.InferenceSession(str(self.path), options, providers=providers(device))
        self.inputs = {node.name: _NUMPY_TYPES.get(node.type) for node in self.session.get_inputs()}
        self.input_names = list(self.inputs)
        self.output_names = [node.name for node in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        """The provider that runs the graph's nodes first: CUDAExecutionProvider or CPUExecutionProvider."""
        return self.session.get_providers()[0]

    def run(self, inputs: Mapping, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"The exported graph {self.path.name} needs input(s) {missing}; it got {sorted(inputs)}.")
        feeds = {name: _numpy(inputs[name], dtype) for name, dtype in self.inputs.items()}
        names = outputs or self.output_names
        return dict(zip(names, self.session.run(names, feeds)))


def _numpy(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
    array = np.asarray(value)
    return array.astype(dtype, copy=False) if dtype is not None else array


class ExportedModel(torch.nn.Module):
    """A graph's session standing in for the torch model: ``model(**inputs)`` -> ``output_class`` (a
    transformers ``ModelOutput`` by default) holding the graph's outputs as torch tensors, on the device the
    task moved this module to (ONNX Runtime itself computes on the device the session was made for).

    It holds no weights: a zero-size parameter tells code that asks a model for its device and dtype
    (``next(model.parameters())``) what the torch model would (float32, the task's device). ``config`` is the
    torch model's config, so that labels and settings read from it are the same."""

    def __init__(self, session: Session, config=None, output_class=None):
        super().__init__()
        from transformers.utils import ModelOutput

        self.session, self.config = session, config
        self.output_class = output_class or ModelOutput
        self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    @property
    def input_names(self) -> list[str]:
        return self.session.input_names

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def forward(self, **inputs):
        outputs = self.session.run(inputs)
        return self.output_class(**{name: torch.from_numpy(value).to(self.anchor.device)
                                    for name, value in outputs.items()})

    def extra_repr(self) -> str:
        return f"{self.session.path.name}, {self.session.provider}"


def exported_model(path, sessions: dict, trust_remote_code: bool = False, graph: str = "model") -> ExportedModel:
    """The stand-in most tasks' ``from_exported`` want: the graph ``graph`` with the config saved beside it."""
    from transformers import AutoConfig

    return ExportedModel(sessions[graph], AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))

"""taskzoo: one registry of fine-tunable task recipes with one predict / evaluate / finetune API."""

from taskzoo.api import evaluate, finetune, load, run, tasks
from taskzoo.errors import DataError, ModelNotFoundError, TaskzooError, TrainingError, UnknownTaskError

__version__ = "0.1.0"
__all__ = ["tasks", "load", "run", "finetune", "evaluate", "TaskzooError", "UnknownTaskError",
           "ModelNotFoundError", "DataError", "TrainingError", "__version__"]

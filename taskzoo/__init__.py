"""taskzoo: one registry of fine-tunable task recipes with one predict / evaluate / finetune API."""

# taskzoo.tasks() is the old name of task_names(), kept for one release. It shares its name with the package
# taskzoo/tasks/: importing the package first, then binding the function, keeps `taskzoo.tasks` the function
# until then (later imports of task modules attach to the package in sys.modules and leave it alone).
import taskzoo.tasks  # noqa: F401  (isort: skip)
from taskzoo.api import evaluate, finetune, load, run, task_names, tasks
from taskzoo.drawing import visualize
from taskzoo.errors import (
                            DataError,
                            ExistingRunError,
                            ModelNotFoundError,
                            TaskzooError,
                            TrainingError,
                            TrainingInterrupted,
                            UnknownTaskError,
)
from taskzoo.serving import serve  # the web stack itself is imported when a server starts

__version__ = "0.1.0"
__all__ = ["task_names", "tasks", "load", "run", "finetune", "evaluate", "visualize", "serve", "TaskzooError",
           "UnknownTaskError", "ModelNotFoundError", "DataError", "TrainingError", "ExistingRunError",
           "TrainingInterrupted", "__version__"]

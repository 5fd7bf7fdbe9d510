"""taskzoo's exceptions. Each is a ValueError or OSError subclass, so existing handlers still catch them."""


class TaskzooError(Exception):
    """Base class of every error taskzoo raises on purpose."""


class UnknownTaskError(TaskzooError, ValueError):
    """The task name is not registered."""


class ModelNotFoundError(TaskzooError, OSError):
    """No model could be found at any of the places taskzoo looked."""


class DataError(TaskzooError, ValueError):
    """The data cannot be used for the task: wrong columns, empty, bad values."""


class TrainingError(TaskzooError, RuntimeError):
    """Fine-tuning cannot go on (for example: the loss became NaN)."""


class LaunchError(TaskzooError, RuntimeError):
    """The processes were launched in a way that would make them work against each other."""

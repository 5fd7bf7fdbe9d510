import pytest

import taskzoo
from taskzoo.registry import ALIASES, TASKS, TaskEntry, get_task, register_task


def test_task_names_lists_the_implemented_tasks():
    assert {"text-classification", "sentence-similarity"} <= set(taskzoo.task_names())
    for name in taskzoo.task_names():
        entry = get_task(name)
        assert entry.default_model
        assert entry.load_class().name == name  # every listed task is implemented, none is a placeholder


def test_aliases_resolve():
    assert get_task("sentiment-analysis").name == "text-classification"
    assert all(target in TASKS for target in ALIASES.values())


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(taskzoo.UnknownTaskError, match="Did you mean 'text-classification'"):
        get_task("text-clasification")
    with pytest.raises(ValueError, match="Unknown task 'zzz'.*Known tasks"):
        taskzoo.load("zzz")


def test_duplicate_registration_raises():
    entry = TaskEntry("text-classification", "x:Y", "m", None, "text")
    with pytest.raises(ValueError, match="already registered"):
        register_task(entry)
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskEntry("brand-new-task", "x:Y", "m", None, "text"), aliases=("sentiment-analysis",))
    assert "brand-new-task" not in TASKS

"""What each place of a task may build: a model at ``task.model``, a dataset at
``task.dataset``, and so on.

A task can come from a shared pool that others can write, so naming a trusted class is not
enough: the object found must be of the *kind* its place expects, and that is checked on the
class itself, before it is called. Every kind is a family of classes; no kind of task object
is a function, so nothing that widens trust, imports code or runs a script
(``alphamill.instance.trust_module_prefix``, test helpers, ``importlib``) can be reached from
a task. The one place that runs a function is the worker's task function (``alphamill worker
--func``), and it must be declared with :func:`task_function`.

A researcher's own classes take part by subclassing the base of their kind (``Model``,
``DataHandlerLP``, ``Processor``, ``RecordTemp``) in a trusted module.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from alphamill.errors import ConfigError

__all__ = [
    "DATASET",
    "ESTIMATOR",
    "HANDLER",
    "KINDS",
    "MODEL",
    "PROCESSOR",
    "RECORD",
    "TASK_FUNCTION",
    "Kind",
    "describe",
    "task_function",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute set by :func:`task_function` on the functions a worker may run.
TASK_FUNCTION_MARK = "__alphamill_task_function__"


@dataclass(frozen=True)
class Kind:
    """A family of objects one place of a task may build.

    ``refusal(obj)`` returns why ``obj`` is not of this kind, or None when it is; it only
    inspects the object (and imports the kind's base class), it never calls it.
    """

    name: str
    expected: str
    refusal: Callable[[Any], str | None]

    def check(self, obj: Any, label: str, place: str, path: str | None = None) -> None:
        """Raise a :class:`ConfigError` at ``path`` (default ``place``) unless ``obj`` is of
        this kind; the message names ``obj`` as ``label`` and what ``place`` expects."""
        reason = self.refusal(obj)
        if reason is not None:
            raise ConfigError(f"{label} {reason}; {self.expects(place)}", path or place)

    def expects(self, place: str) -> str:
        return f"{place} expects {self.expected}"

    def accepts(self, obj: Any) -> bool:
        return self.refusal(obj) is None


def describe(obj: Any) -> str:
    """``"a function"``, ``"a module"``, ``"an instance of X"``: what a refused object is."""
    if inspect.isclass(obj):
        return "a class"
    if inspect.ismodule(obj):
        return "a module"
    if inspect.isroutine(obj):
        return "a function"
    return f"an instance of {type(obj).__name__}"


def _base(ref: str) -> type:
    module, _, name = ref.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _class_refusal(obj: Any, base_ref: str) -> str | None:
    if not inspect.isclass(obj):
        return f"is {describe(obj)}, not a class"
    if not issubclass(obj, _base(base_ref)):
        return f"is not a subclass of {base_ref}"
    if inspect.isabstract(obj):
        return "is abstract"
    return None


def _subclass_of(base_ref: str) -> Callable[[Any], str | None]:
    return lambda obj: _class_refusal(obj, base_ref)


def _estimator_refusal(obj: Any) -> str | None:
    reason = _class_refusal(obj, "sklearn.base.BaseEstimator")
    if reason is not None:
        return reason
    from sklearn.base import ClassifierMixin, RegressorMixin

    if not issubclass(obj, (RegressorMixin, ClassifierMixin)):
        return "is neither a regressor nor a classifier"
    return None


def _task_function_refusal(obj: Any) -> str | None:
    if not inspect.isfunction(obj):
        return f"is {describe(obj)}, not a function"
    if obj.__dict__.get(TASK_FUNCTION_MARK) is not True:
        return "is not declared a task function (decorate it with @alphamill.kinds.task_function)"
    return None


MODEL = Kind(
    "model",
    "a model: a subclass of alphamill.model.Model",
    _subclass_of("alphamill.model.base.Model"),
)
DATASET = Kind(
    "dataset",
    "a dataset: a subclass of alphamill.dataset.Dataset",
    _subclass_of("alphamill.dataset.dataset.Dataset"),
)
HANDLER = Kind(
    "handler",
    "a data handler: a subclass of alphamill.dataset.DataHandlerLP",
    _subclass_of("alphamill.dataset.handler.DataHandlerLP"),
)
PROCESSOR = Kind(
    "processor",
    "a processor: a subclass of alphamill.features.processors.Processor",
    _subclass_of("alphamill.features.processors.Processor"),
)
RECORD = Kind(
    "record",
    "a record: a subclass of alphamill.workflow.record_temp.RecordTemp",
    _subclass_of("alphamill.workflow.record_temp.RecordTemp"),
)
ESTIMATOR = Kind(
    "estimator",
    "a scikit-learn estimator: a regressor or classifier class deriving from sklearn.base.BaseEstimator",
    _estimator_refusal,
)
TASK_FUNCTION = Kind(
    "task function",
    "a task function declared with @alphamill.kinds.task_function",
    _task_function_refusal,
)

#: Every kind; each place of a task that builds an object names one of them.
KINDS: tuple[Kind, ...] = (MODEL, DATASET, HANDLER, PROCESSOR, RECORD, ESTIMATOR, TASK_FUNCTION)


def task_function(func: F) -> F:
    """Declare ``func`` a task function: ``alphamill worker --func module:func`` may run it.

    The module must also be trusted (``ALPHAMILL_TRUSTED_MODULES``), so a worker never
    imports a module only to find out that it may not run anything from it.
    """
    if not inspect.isfunction(func):
        raise ConfigError(f"expected a function, got {describe(func)}", "task_function")
    setattr(func, TASK_FUNCTION_MARK, True)
    return func

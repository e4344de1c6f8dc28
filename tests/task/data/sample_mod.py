"""Classes that instance tests build from configs."""

from __future__ import annotations

from os import system  # a re-export that must not become importable through this module

from tests.task.data.other_mod import Helper

__all__ = ["Model", "Plain", "Strict", "Helper", "system", "make_model", "NOT_CALLABLE"]

NOT_CALLABLE = 3


class Model:
    def __init__(self, loss: str = "mse", learning_rate: float = 0.1, **kwargs):
        self.loss = loss
        self.learning_rate = learning_rate
        self.extra = kwargs


class Strict:
    calls = 0

    def __init__(self, loss: str, depth: int = 3):
        Strict.calls += 1
        self.loss = loss
        self.depth = depth


class Plain:
    """A constructor that fails inside its body on a wrong value type."""

    def __init__(self, n: int = 1):
        self.n = n + 1


def make_model(loss: str = "mse") -> Model:
    return Model(loss=loss)

"""Shared test options: ``--long`` runs the slow chaos/load variants.

The suite's task functions (``--func tests.task_manager.funcs:ledger``) live in modules a
worker must trust before it imports them; the worker processes the tests start inherit
this environment.
"""

from __future__ import annotations

import os

import pytest

TASK_FUNCTION_MODULES = ("tests.task_manager.funcs", "tests.security.test_redaction")
_trusted = [p for p in os.environ.get("ALPHAMILL_TRUSTED_MODULES", "").split(",") if p]
os.environ["ALPHAMILL_TRUSTED_MODULES"] = ",".join(dict.fromkeys([*_trusted, *TASK_FUNCTION_MODULES]))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False, help="run long chaos/load tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long test: run with --long")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

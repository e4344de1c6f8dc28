"""Bad inputs through the Python API: generators, universes and object configs.

These mistakes usually arrive through `alphamill run`; here they are checked where they are
raised, so each message is pinned to the field it names.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from alphamill.cli import main
from alphamill.errors import AlphamillError


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from alphamill.data import open_data

    out = tmp_path_factory.mktemp("api") / "data"
    res = CliRunner().invoke(main, ["data", "demo", "--out", str(out), "--n", "4", "--start", "2010-01-01",
                                    "--end", "2010-12-31"])
    assert res.exit_code == 0, res.output
    return open_data(str(out))


def _gen_cases():
    from alphamill.task.gen import GridGen, MultiHorizonGen, RollingGen

    return [
        (lambda: RollingGen(step=0), "step"),
        (lambda: RollingGen(step=-3), "step"),
        (lambda: RollingGen(step=2.5), "step"),
        (lambda: RollingGen(step=10, trunc_days=-1), "trunc_days"),
        (lambda: MultiHorizonGen(horizons=[]), "horizons"),
        (lambda: MultiHorizonGen(horizons=[5, 5]), "horizons"),
        (lambda: GridGen({"model.kwargs.lr": []}), "grid.model.kwargs.lr"),
        (lambda: GridGen({"model.kwargs.lr": 0.1}), "grid.model.kwargs.lr"),
    ]


@pytest.mark.parametrize("i", range(8))
def test_generator_settings(i):
    make, field = _gen_cases()[i]
    with pytest.raises(AlphamillError) as exc:
        make()
    assert field in str(exc.value)


@pytest.mark.parametrize(
    ("instruments", "message"),
    [
        ([], "empty"),
        ("", "empty universe name"),
        ("no_such_market", "no_such_market"),
        (["S0001", "NOPE"], "NOPE"),
        ({"market": "all", "filter_pipe": [{"x": 1}]}, "filter_pipe"),
        (42, "instruments"),
    ],
)
def test_bad_universe(source, instruments, message):
    from alphamill.data.universe import resolve_universe

    with pytest.raises(AlphamillError) as exc:
        resolve_universe(source, instruments)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"class": "NoSuch", "module_path": "alphamill.model"}, "task.model.class"),
        ({"class": "LinearModel", "module_path": "alphamill.model", "kwargs": {"no_such_kw": 1}},
         "task.model.kwargs"),
        ({"class": "LinearModel", "module_path": "alphamill.model", "kwargs": [1, 2]}, "task.model.kwargs"),
        ({"class": "system", "module_path": "os"}, "task.model.module_path"),
        ({"module_path": "alphamill.model"}, "task.model"),
    ],
)
def test_bad_object_config(config, path):
    from alphamill.instance import init_instance_by_config

    with pytest.raises(AlphamillError) as exc:
        init_instance_by_config(config, path="task.model")
    assert path in str(exc.value)

"""Build objects from Qlib-style configs: ``{"class", "module_path", "kwargs"}``.

Accepted forms of ``config`` (as in Qlib's ``init_instance_by_config``):

* an instance of ``accept_types``: returned as is;
* ``{"class": "LGBModel", "module_path": "alphamill.model.gbdt", "kwargs": {...}}``;
  ``class`` may be a full ``"pkg.mod.Class"`` (then ``module_path`` is not needed), the
  class object itself, and ``"func"`` may stand for ``"class"``; ``module_path`` may be a
  dotted module or the path of a ``.py`` file;
* a string ``"pkg.mod.Class"``;
* a class (or other callable) object: called with no config kwargs.

Security: a task definition may come from a shared pool, so importing by name is
limited to trusted modules: names under ``alphamill``, ``lightgbm`` and ``sklearn``,
plus the prefixes in ``ALPHAMILL_TRUSTED_MODULES`` (comma separated), those given to
:func:`trust_module_prefix`, and ``trusted_modules`` (a list) in the config file. Private
modules and names (a part starting with ``_``) are never imported, nor the test suites a
trusted package ships (``tests``, ``test_*``, ``conftest`` below the trusted prefix). The
object found must itself be defined in a trusted module (a trusted module re-exporting
``os.system`` does not make it trusted). A ``.py`` file is loaded only if it lies under a
directory trusted explicitly: those in ``ALPHAMILL_TRUSTED_PATHS`` (``os.pathsep``
separated), ``trusted_paths`` in the config file, or given to :func:`trust_path`. Pickle
files (``file:///x.pkl`` configs in Qlib) are refused.

Every place of a task passes ``kind=`` (:mod:`alphamill.kinds`): the object found must be
of that kind (a model class at ``task.model``, ...), checked before it is called.

Every error is a :class:`~alphamill.errors.ConfigError` naming the dotted path at fault
(``task.model``, ``task.model.module_path``, ``task.model.kwargs.loss``). Callers that
build nested objects pass ``path=`` (e.g. ``f"{path}.kwargs.handler"``) so messages keep
pointing into the task.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from alphamill.errors import ConfigError
from alphamill.kinds import Kind

__all__ = [
    "init_instance_by_config",
    "get_callable_kwargs",
    "resolve_callable",
    "get_module_by_module_path",
    "split_module_path",
    "trust_module_prefix",
    "trust_path",
    "trusted_module_prefixes",
    "trusted_paths",
]

DEFAULT_TRUSTED_MODULES: tuple[str, ...] = ("alphamill", "lightgbm", "sklearn")
_extra_prefixes: list[str] = []
_extra_paths: list[Path] = []
_file_modules: dict[Path, tuple[float, ModuleType]] = {}

_HOW_TO_TRUST_MODULE = (
    "to trust it, set ALPHAMILL_TRUSTED_MODULES={prefix} (comma separated), add it to "
    "'trusted_modules' in the config file, or call "
    "alphamill.instance.trust_module_prefix({prefix!r})"
)
_HOW_TO_TRUST_PATH = (
    "to trust it, set ALPHAMILL_TRUSTED_PATHS={dir} ({sep!r} separated), add it to "
    "'trusted_paths' in the config file, or call alphamill.instance.trust_path({dir!r})"
)


def trust_module_prefix(prefix: str) -> None:
    """Allow importing modules named ``prefix`` or ``prefix.*`` for this process."""
    if not isinstance(prefix, str) or not prefix.strip(".").strip():
        raise ConfigError(f"expected a module name prefix such as 'mypkg', got {prefix!r}")
    prefix = prefix.strip().strip(".")
    if prefix not in _extra_prefixes:
        _extra_prefixes.append(prefix)


def trust_path(directory: str | os.PathLike[str]) -> None:
    """Allow loading ``.py`` files under ``directory`` for this process."""
    p = Path(directory).expanduser().resolve()
    if p not in _extra_paths:
        _extra_paths.append(p)


def _config_list(key: str) -> list[str]:
    from alphamill.config import _config_file

    value = _config_file().get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"expected a list of strings, got {value!r}", key)
    return value


def trusted_module_prefixes(include_config_file: bool = True) -> tuple[str, ...]:
    """Module name prefixes allowed for import (defaults, env var, API, config file)."""
    env = [p.strip() for p in os.environ.get("ALPHAMILL_TRUSTED_MODULES", "").split(",")]
    prefixes = [*DEFAULT_TRUSTED_MODULES, *(p for p in env if p), *_extra_prefixes]
    if include_config_file:
        prefixes += _config_list("trusted_modules")
    return tuple(dict.fromkeys(p.strip(".") for p in prefixes if p.strip(".")))


def trusted_paths() -> tuple[Path, ...]:
    """Directories whose ``.py`` files may be loaded (env var, API, config file).

    None by default, not even the working directory: a task naming a script that lies
    there would run it.
    """
    env = os.environ.get("ALPHAMILL_TRUSTED_PATHS", "")
    base = [p for p in env.split(os.pathsep) if p]
    dirs = [Path(p).expanduser().resolve() for p in [*base, *_config_list("trusted_paths")]]
    return tuple(dict.fromkeys([*dirs, *_extra_paths]))


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_trusted_module(name: str) -> bool:
    return _under(name, trusted_module_prefixes(False)) or _under(
        name, trusted_module_prefixes(True)
    )


_TEST_PARTS = frozenset({"tests", "test", "testing", "conftest"})


def _test_part(name: str) -> str | None:
    """The first part of module ``name``, below the longest trusted prefix that admits it,
    that belongs to a test suite (``tests``, ``test_x``, ``_testing``, ``conftest``)."""
    parts = name.split(".")
    admitting = [len(p.split(".")) for p in trusted_module_prefixes() if _under(name, (p,))]
    for part in parts[max(admitting, default=len(parts)) :]:
        bare = part.strip("_")
        if bare in _TEST_PARTS or bare.startswith("test_"):
            return part
    return None


def _expects(kind: Kind | None, place: str) -> str:
    return f"; {kind.expects(place)}" if kind is not None else ""


def _check_module_name(name: str, path: str, kind: Kind | None = None, place: str = "") -> None:
    """Refuse, before anything is imported: malformed, private, untrusted and test modules."""
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        raise ConfigError(f"expected a dotted module name such as 'pkg.mod', got {name!r}", path)
    private = next((part for part in parts if part.startswith("_")), None)
    if private is not None:
        raise ConfigError(
            f"module {name!r} is private ({private!r} starts with '_'): a task may only name "
            "public modules" + _expects(kind, place),
            path,
        )
    _check_module_trusted(name, path, _expects(kind, place))
    test = _test_part(name)
    if test is not None:
        raise ConfigError(
            f"module {name!r} is part of a test suite ({test!r}): a task may only name library "
            "modules" + _expects(kind, place),
            path,
        )


def _check_module_trusted(name: str, path: str, expects: str = "") -> None:
    if not _is_trusted_module(name):
        prefix = name.split(".")[0]
        try:
            # a top-level lookup executes nothing, so a typo can be told from an untrusted name
            missing = importlib.util.find_spec(prefix) is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            raise ConfigError(f"module {name!r} not found (no package {prefix!r}){expects}", path)
        raise ConfigError(
            f"module {name!r} is not trusted (trusted prefixes: "
            f"{', '.join(trusted_module_prefixes())}); "
            + _HOW_TO_TRUST_MODULE.format(prefix=prefix)
            + expects,
            path,
        )


def split_module_path(module_path: str) -> tuple[str, str]:
    """``"a.b.Class"`` -> ``("a.b", "Class")``; ``"Class"`` -> ``("", "Class")``."""
    *m_path, cls = module_path.split(".")
    return ".".join(m_path), cls


def _load_py_file(file: str, path: str) -> ModuleType:
    p = Path(file).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"python file {file} does not exist", path)
    roots = trusted_paths()
    if not any(p.is_relative_to(root) for root in roots):
        raise ConfigError(
            f"python file {p} is not under a trusted directory (trusted: "
            f"{', '.join(map(str, roots)) or 'none'}); "
            + _HOW_TO_TRUST_PATH.format(dir=str(p.parent), sep=os.pathsep),
            path,
        )
    if p.name.startswith("_"):
        raise ConfigError(f"python file {p} is private (its name starts with '_')", path)
    mtime = p.stat().st_mtime
    cached = _file_modules.get(p)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    stem = re.sub(r"\W", "_", p.stem)
    digest = hashlib.sha1(str(p).encode()).hexdigest()[:10]
    name = f"alphamill_file_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load python file {p}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ConfigError(f"importing {p} failed: {type(e).__name__}: {e}", path) from e
    _file_modules[p] = (mtime, module)
    return module


def get_module_by_module_path(
    module_path: str | ModuleType | os.PathLike[str], path: str = "task.module_path"
) -> ModuleType:
    """Import a trusted dotted module or load a trusted ``.py`` file (Qlib's helper)."""
    return _module(module_path, path)


def _module(
    module_path: str | ModuleType | os.PathLike[str],
    path: str,
    kind: Kind | None = None,
    place: str = "",
) -> ModuleType:
    if isinstance(module_path, ModuleType):
        return module_path
    if isinstance(module_path, os.PathLike):
        module_path = os.fspath(module_path)
    if not isinstance(module_path, str) or not module_path:
        raise ConfigError(
            f"expected a dotted module name or a .py file path, got {module_path!r}", path
        )
    if module_path.endswith(".py"):
        return _load_py_file(module_path, path)
    _check_module_name(module_path, path, kind, place)
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        if e.name and (module_path == e.name or module_path.startswith(e.name + ".")):
            raise ConfigError(f"module {module_path!r} not found", path) from None
        raise ConfigError(
            f"importing module {module_path!r} failed: {type(e).__name__}: {e}", path
        ) from e
    except Exception as e:
        raise ConfigError(
            f"importing module {module_path!r} failed: {type(e).__name__}: {e}", path
        ) from e


def _check_defined_in(obj: Any, label: str, module: ModuleType, path: str, expects: str) -> None:
    """The object must come from a trusted module, and not from a test suite's helpers."""
    defined_in = getattr(obj, "__module__", None)
    if not isinstance(defined_in, str) or defined_in == module.__name__:
        return
    if module.__name__.startswith("alphamill_file_") and defined_in.startswith("alphamill_file_"):
        return
    if not _is_trusted_module(defined_in):
        raise ConfigError(
            f"{label} is defined in module {defined_in!r}, which is not trusted; "
            + _HOW_TO_TRUST_MODULE.format(prefix=defined_in.split(".")[0])
            + expects,
            path,
        )
    test = _test_part(defined_in)
    if test is not None:
        raise ConfigError(
            f"{label} is defined in {defined_in!r}, part of a test suite ({test!r}), not a "
            "library" + expects,
            path,
        )


def _resolve_name(
    name: str,
    module_path: Any,
    default_module: Any,
    path: str,
    name_path: str,
    kind: Kind | None = None,
) -> Any:
    m_path, attr = split_module_path(name)
    if m_path:
        module = _module(m_path, name_path, kind, path)
    else:
        source = module_path if module_path is not None else default_module
        if source is None:
            raise ConfigError(
                f"class {name!r} has no module: give 'module_path' or a full 'pkg.mod.{name}'",
                path,
            )
        mp_path = f"{path}.module_path" if module_path is not None else path
        module = _module(source, mp_path, kind, path)
    if not attr or not attr.isidentifier():
        raise ConfigError(f"expected a class name such as 'pkg.mod.Class', got {name!r}", name_path)
    label = f"{module.__name__}.{attr}"
    if attr.startswith("_"):
        raise ConfigError(
            f"{label} is private (its name starts with '_')" + _expects(kind, path), name_path
        )
    try:
        obj = getattr(module, attr)
    except AttributeError:
        public = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, public, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"module {module.__name__!r} has no {attr!r}{hint}", name_path) from None
    if not callable(obj):
        raise ConfigError(
            f"{label} is a {type(obj).__name__}, expected a class or function"
            + _expects(kind, path),
            name_path,
        )
    _check_defined_in(obj, label, module, name_path, _expects(kind, path))
    if kind is not None:
        kind.check(obj, label, path, name_path)
    return obj


def resolve_callable(
    config: Any,
    kind: Kind,
    default_module: str | ModuleType | None = None,
    path: str = "task",
) -> Any:
    """The class (or declared function) ``config`` names, checked to be of ``kind``; nothing
    is called. Everything a task builds goes through this check."""
    return get_callable_kwargs(config, default_module=default_module, path=path, kind=kind)[0]


def get_callable_kwargs(
    config: Any,
    default_module: str | ModuleType | None = None,
    path: str = "task",
    kind: Kind | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Resolve ``config`` to ``(callable, kwargs)`` without calling it (Qlib's helper).

    With ``kind``, the callable must be of that kind (see :mod:`alphamill.kinds`).
    """
    if isinstance(config, dict):
        if "class" in config:
            key = "class"
        elif "func" in config:
            key = "func"
        else:
            raise ConfigError(
                "missing key 'class' (expected {'class': ..., 'module_path': ..., "
                f"'kwargs': {{...}}}}, got keys {sorted(map(str, config))})",
                path,
            )
        target = config[key]
        if isinstance(target, str):
            _callable = _resolve_name(
                target, config.get("module_path"), default_module, path, f"{path}.{key}", kind
            )
        elif callable(target):
            _callable = _checked(target, kind, path, f"{path}.{key}")
        else:
            raise ConfigError(
                f"expected a class name string or a class, got {type(target).__name__}",
                f"{path}.{key}",
            )
        kwargs = config.get("kwargs")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise ConfigError(
                f"expected a mapping of keyword arguments, got {type(kwargs).__name__}",
                f"{path}.kwargs",
            )
        for k in kwargs:
            if not isinstance(k, str) or not k.isidentifier():
                raise ConfigError(f"keyword names must be identifiers, got {k!r}", f"{path}.kwargs")
        return _callable, dict(kwargs)
    if isinstance(config, str):
        if config.startswith("file://"):
            raise ConfigError(
                f"loading objects from files ({config}) would unpickle them and is not "
                "supported; give a {'class', 'module_path', 'kwargs'} config instead",
                path,
            )
        return _resolve_name(config, None, default_module, path, path, kind), {}
    if isinstance(config, type) or callable(config):
        return _checked(config, kind, path, path), {}
    raise ConfigError(
        "expected a {'class': ..., 'module_path': ..., 'kwargs': {...}} dict, a "
        f"'pkg.mod.Class' string or a class, got {type(config).__name__}",
        path,
    )


def _checked(obj: Any, kind: Kind | None, place: str, path: str) -> Any:
    """A class object given directly (from Python, never from JSON) is held to its kind too."""
    if kind is not None:
        label = getattr(obj, "__qualname__", None) or repr(obj)
        kind.check(obj, label, place, path)
    return obj


def _binds(sig: inspect.Signature | None, kwargs: dict[str, Any]) -> TypeError | None:
    if sig is None:
        return None
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        return e
    return None


def _kwarg_error(err: TypeError, name: str, kwargs: dict[str, Any], path: str) -> ConfigError:
    msg = str(err)
    m = re.search(r"unexpected keyword argument '(\w+)'", msg)
    if m and m.group(1) in kwargs:
        return ConfigError(
            f"{name} does not accept this argument ({msg})", f"{path}.kwargs.{m.group(1)}"
        )
    return ConfigError(f"{name} rejected its keyword arguments: {msg}", f"{path}.kwargs")


def init_instance_by_config(
    config: Any,
    accept_types: type | tuple[type, ...] = (),
    try_kwargs: dict[str, Any] | None = None,
    default_module: str | ModuleType | None = None,
    path: str = "task",
    kind: Kind | None = None,
    **kwargs: Any,
) -> Any:
    """Build the object described by ``config`` (see the module docstring).

    ``kind`` (every place of a task gives one) is checked on the class before it is called.

    ``try_kwargs`` are passed only if the constructor accepts all of them (Qlib retries
    without them on ``TypeError``; here the signature is checked first when it can be
    read, so a constructor is never run twice). ``kwargs`` are always passed; giving a
    keyword both in the config and in ``kwargs`` is an error.
    """
    if accept_types and isinstance(config, accept_types):
        return config
    if isinstance(config, Path):
        config = str(config)
    klass, cls_kwargs = get_callable_kwargs(
        config, default_module=default_module, path=path, kind=kind
    )
    name = getattr(klass, "__qualname__", None) or repr(klass)
    for k in kwargs:
        if k in cls_kwargs:
            raise ConfigError(
                f"{k!r} is given both in the config and by the caller", f"{path}.kwargs.{k}"
            )
    base = {**cls_kwargs, **kwargs}
    try_kwargs = dict(try_kwargs or {})
    try:
        sig: inspect.Signature | None = inspect.signature(klass)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        err = _binds(sig, base)
        if err is not None:
            raise _kwarg_error(err, name, cls_kwargs, path) from None
        use_try = bool(try_kwargs) and not any(k in base for k in try_kwargs)
        use_try = use_try and _binds(sig, {**base, **try_kwargs}) is None
        attempts = [{**base, **try_kwargs}] if use_try else [base]
    else:
        attempts = [base]
        if try_kwargs and not any(k in base for k in try_kwargs):
            attempts.insert(0, {**base, **try_kwargs})
    for i, call_kwargs in enumerate(attempts):
        try:
            return klass(**call_kwargs)
        except TypeError as e:
            if i + 1 < len(attempts):
                continue
            raise _kwarg_error(e, name, cls_kwargs, path) from e
    raise AssertionError("unreachable")  # pragma: no cover

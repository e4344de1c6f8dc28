"""Payload codecs of a task pool: how definitions and results are stored.

``json`` (the default) stores canonical JSON only, so anyone with write access to the pool
can at worst store bad data, never run code on the workers. ``pickle`` exists for Qlib
compatibility (results such as fitted models); it must be chosen when the pool is created and
every pickled payload is signed with an HMAC key taken from ``ALPHAMILL_PICKLE_KEY``. The key
never lives in the database, so a payload written by someone without the key is refused
before it is unpickled.

In a pickle pool, values that are JSON-compatible are still stored as plain JSON (they stay
queryable with ``def.`` paths); only the rest becomes a signed envelope
``{"__pickle__": <base64>, "hmac": <hex sha256>}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pickle
import re
from typing import Any

from alphamill.errors import CanonicalError, ConfigError, PoolError
from alphamill.limits import int_problem, json_needs_check, text_problem

PICKLE_KEY_ENV = "ALPHAMILL_PICKLE_KEY"
#: Largest task definition accepted, as canonical JSON: tasks describe work, data belongs in
#: files the task names (a huge row slows every claim and query of the pool).
MAX_TASK_BYTES = 1 << 20
CODECS: tuple[str, ...] = ("json", "pickle")
_ENVELOPE = "__pickle__"


class PayloadError(PoolError):
    """A stored payload cannot be decoded safely (unsigned, tampered, wrong codec)."""


def check_codec(name: str | None, field: str = "codec") -> str | None:
    """Return ``name`` if it is a known codec (or ``None``), else raise naming the field."""
    if name is not None and name not in CODECS:
        raise ConfigError(f"unknown codec {name!r}; expected one of {', '.join(CODECS)}", field)
    return name


def pickle_key(pool: str) -> bytes:
    """The HMAC key of pickle pools, from the environment only."""
    key = os.environ.get(PICKLE_KEY_ENV, "")
    if not key:
        raise PoolError(
            f"task_pool {pool!r}: the pickle codec needs an HMAC key in the environment variable "
            f"{PICKLE_KEY_ENV} (the key is never stored in the database)"
        )
    return key.encode()


def _canonicalize(obj: Any, path: str) -> Any:
    t = type(obj)
    if obj is None or t is bool or (t is str and obj.isascii() and "\x00" not in obj):
        return obj  # the usual result: no work at all
    fast = plain_canonical(obj)
    if fast is not None:
        return fast[0]
    from alphamill.canonical import canonicalize

    return canonicalize(obj, path=path)


_SCALARS = frozenset({str, int, float, bool, type(None)})
#: A key as ``json`` writes a non-string key (``1``, ``1.5``, ``true``, ``null`` ...). Only
#: when one appears in the compact text can a key have been converted, so only then is
#: the (slower) walk over the keys needed; a string key that looks like this merely costs
#: the walk.
_SUSPECT_KEY = re.compile(r'"(?:-?[0-9][0-9.eE+-]*|true|false|null|-?Infinity|NaN)":')


def _keys_are_strings(obj: Any) -> bool:
    """Whether every mapping inside ``obj`` has only ``str`` keys (iterative: no call per node)."""
    stack = [obj]
    pop, push = stack.pop, stack.append
    while stack:
        o = pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if type(k) is not str:
                    return False
                if type(v) not in _SCALARS:
                    push(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                if type(v) not in _SCALARS:
                    push(v)
    return True


def plain_canonical(obj: Any) -> tuple[Any, str] | None:
    """``(value, canonical JSON text)`` of JSON-like data, or ``None``.

    The common task is plain JSON. For any value that ``json.dumps`` encodes without loss,
    :func:`alphamill.canonical.canonical_json` produces the same text as ``json.dumps`` with
    sorted keys and compact separators (which runs in C): tuples become lists in both,
    subclasses of str/int/float and of dict/list are written as their base values in both.
    The exceptions are checked here and sent down the full :mod:`alphamill.canonical` path,
    which applies its rules or names the faulty path: values ``json`` cannot encode (dates,
    numpy scalars other than float64, sets, NaN), non-string keys (``json`` would silently
    turn them into strings), ``-0.0`` and values that may break a store's limits
    (:mod:`alphamill.limits`). The value is returned as given: the stores
    serialise it to exactly this JSON.
    """
    t = type(obj)
    if obj is None or t is bool or (t is int and int_problem(obj) is None) or (t is str and text_problem(obj) is None):
        return obj, json.dumps(obj, ensure_ascii=False)
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    if "-0.0" in text or (_SUSPECT_KEY.search(text) is not None and not _keys_are_strings(obj)):
        return None
    if json_needs_check(text):  # what no store can hold: the full path names it
        return None
    return obj, text


def fast_task_hash(definition: Any) -> str:
    """:func:`alphamill.canonical.task_hash`, computed in C for plain JSON values.

    Identical digests (sha256 of the same canonical text; checked by the tests); anything
    that is not plain JSON is hashed by ``canonical.task_hash`` itself.
    """
    fast = plain_canonical(definition)
    if fast is not None:
        return hashlib.sha256(fast[1].encode("utf-8")).hexdigest()
    from alphamill.canonical import task_hash

    return task_hash(definition)


def _check_size(n_bytes: int, where: str) -> None:
    if n_bytes > MAX_TASK_BYTES:
        raise CanonicalError(
            f"task definition is {n_bytes / (1 << 20):.1f} MiB as canonical JSON; the limit is "
            f"{MAX_TASK_BYTES >> 20} MiB (put large data in a file and name the file in the task)",
            where,
        )


class Codec:
    """Encode/decode definitions and results of one pool."""

    def __init__(self, name: str, pool: str, *, require_key: bool = False):
        self.name = check_codec(name) or "json"
        self.pool = pool
        self._key_cache: bytes | None = None
        if self.name == "pickle" and require_key:
            self._key_cache = pickle_key(pool)

    @property
    def _key(self) -> bytes:
        """The HMAC key, read when a pickled payload is first sealed or opened.

        Counting or listing a pickle pool needs no key; creating one does
        (``require_key``), so a pool is never created that its owner cannot read.
        """
        if self._key_cache is None:
            self._key_cache = pickle_key(self.pool)
        return self._key_cache

    def __repr__(self) -> str:
        return f"Codec({self.name!r}, pool={self.pool!r})"

    # -- hashing -------------------------------------------------------------------------------
    def task_hash(self, definition: Any) -> str:
        """Content hash used for dedupe: the canonical hash, or the pickle's in pickle pools."""
        if self.name == "json":
            return fast_task_hash(definition)
        try:
            return fast_task_hash(definition)
        except CanonicalError:
            return "pickle:" + hashlib.sha256(pickle.dumps(definition, protocol=4)).hexdigest()

    def prepare(self, definition: Any, where: str = "task") -> tuple[Any, str]:
        """``(stored form, content hash)`` of a definition, in one canonical pass when plain."""
        return self.prepare_text(definition, where)[:2]

    def prepare_text(self, definition: Any, where: str = "task") -> tuple[Any, str, str | None]:
        """``(stored form, content hash, canonical JSON text or None)``: the text is given when
        the plain-JSON fast path produced it, so the store need not encode it again."""
        fast = plain_canonical(definition)
        if fast is not None:
            value, text = fast
            if isinstance(value, dict) and _ENVELOPE in value:
                raise CanonicalError(f"the key {_ENVELOPE!r} is reserved for signed payloads", where)
            data = text.encode("utf-8")
            _check_size(len(data), where)
            return value, hashlib.sha256(data).hexdigest(), text
        return self.encode_definition(definition, where), self.task_hash(definition), None

    # -- encoding ------------------------------------------------------------------------------
    def encode_definition(self, definition: Any, where: str = "task") -> Any:
        """The stored form of a task definition (canonical JSON or a signed envelope)."""
        stored = self._encode(definition, where, "task definitions must be plain JSON data")
        _check_size(len(json.dumps(stored, separators=(",", ":"), ensure_ascii=False).encode("utf-8")), where)
        return stored

    def encode_result(self, result: Any, task_id: str) -> Any:
        """The stored form of a task's result; a non-JSON result is a clear error in JSON pools."""
        return self._encode(
            result,
            f"result of task {task_id}",
            "task functions must return plain data such as dicts, lists, numbers and strings",
        )

    def _encode(self, obj: Any, where: str, hint: str) -> Any:
        try:
            value = _canonicalize(obj, where)
        except CanonicalError as e:
            if self.name != "pickle":
                raise CanonicalError(
                    f"{e} (the pool {self.pool!r} uses the json codec: {hint}, or create the "
                    "pool with codec='pickle')"
                ) from None
            return self._seal(obj)
        if isinstance(value, dict) and _ENVELOPE in value:
            raise CanonicalError(f"the key {_ENVELOPE!r} is reserved for signed payloads", where)
        return value

    def _seal(self, obj: Any) -> dict[str, str]:
        raw = pickle.dumps(obj, protocol=4)
        mac = hmac.new(self._key, raw, hashlib.sha256).hexdigest()
        return {_ENVELOPE: base64.b64encode(raw).decode("ascii"), "hmac": mac}

    # -- decoding ------------------------------------------------------------------------------
    def decode(self, stored: Any, where: str = "payload") -> Any:
        """The Python value of a stored payload; unsigned or tampered pickles are refused."""
        if not (isinstance(stored, dict) and _ENVELOPE in stored):
            return stored
        if self.name != "pickle":
            raise PayloadError(
                f"{where} in pool {self.pool!r}: found a pickled payload but the pool uses the "
                "json codec; refusing to unpickle it"
            )
        mac = stored.get("hmac")
        blob = stored.get(_ENVELOPE)
        if not isinstance(mac, str) or not isinstance(blob, str):
            raise PayloadError(f"{where} in pool {self.pool!r}: unsigned pickled payload refused")
        try:
            raw = base64.b64decode(blob.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise PayloadError(
                f"{where} in pool {self.pool!r}: corrupt pickled payload refused"
            ) from None
        expected = hmac.new(self._key, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac):
            raise PayloadError(
                f"{where} in pool {self.pool!r}: pickled payload signature does not match "
                f"(tampered, or written with another {PICKLE_KEY_ENV}); refused"
            )
        return pickle.loads(raw)  # noqa: S301 - signed with a key that never leaves the environment

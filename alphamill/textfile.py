"""Reading the text files users hand over (task files, run configs, ``alphamill.yaml``).

Every one of them is UTF-8 (a UTF-8 byte-order mark is accepted); a folder, an unreadable
file, another encoding or nesting too deep for a parser is one clear error naming the file,
never a traceback.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

import yaml

from alphamill.errors import ConfigError

_BOMS = {
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
}


def read_text(path: str | Path, field: str | None = None) -> str:
    """The UTF-8 text of the file at ``path``; errors name the file and ``field``."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a folder; expected a file", field)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist", field) from None
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror or e}", field) from None
    for bom in sorted(_BOMS, key=len, reverse=True):
        if raw.startswith(bom):
            raise ConfigError(
                f"{p} is {_BOMS[bom]} text; expected UTF-8 (convert it, e.g. "
                f"iconv -f {_BOMS[bom]} -t UTF-8)",
                field,
            )
    if b"\x00" in raw:
        raise ConfigError(
            f"{p} holds NUL bytes (UTF-16, or not text at all); expected UTF-8 text", field
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{p} is not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}); save it as UTF-8",
            field,
        ) from None


def _too_deep(p: str | Path, field: str | None) -> ConfigError:
    return ConfigError(
        f"{p}: nested too deeply to parse (a task or config is a few levels deep)", field
    )


def parse_yaml(text: str, path: str | Path, field: str | None = None) -> Any:
    """``yaml.safe_load`` of a file's text; deep nesting is a clear error (YAML errors pass)."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise _too_deep(path, field) from None


def parse_json(text: str, path: str | Path, field: str | None = None) -> Any:
    """``json.loads`` of a file's text; deep nesting is a clear error (syntax errors pass)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise _too_deep(path, field) from None


__all__ = ["parse_json", "parse_yaml", "read_text"]

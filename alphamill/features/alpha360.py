"""Alpha360: Qlib's 360 raw price/volume features (``Alpha360DL.get_feature_config``).

The last 60 days of close, open, high, low, vwap and volume, each divided by today's close
(volume by today's volume plus 1e-12), named ``CLOSE59`` ... ``CLOSE0``, ``OPEN59`` ...,
``VOLUME0``, in Qlib's order and with Qlib's expression strings, so they are evaluated by
:mod:`alphamill.features.expr` with the same rules as Alpha158 (float32 element-wise
arithmetic, ``Ref`` counting calendar rows, halted days as NaN rows).
"""

from __future__ import annotations

LAGS = 60
PRICE_FIELDS = ("close", "open", "high", "low", "vwap")


def _feature_config() -> tuple[list[str], list[str]]:
    """(expressions, names) in Qlib's order."""
    fields: list[str] = []
    names: list[str] = []
    for field in PRICE_FIELDS:
        for i in range(LAGS - 1, 0, -1):
            fields.append(f"Ref(${field}, {i})/$close")
            names.append(f"{field.upper()}{i}")
        fields.append(f"${field}/$close")
        names.append(f"{field.upper()}0")
    for i in range(LAGS - 1, 0, -1):
        fields.append(f"Ref($volume, {i})/($volume+1e-12)")
        names.append(f"VOLUME{i}")
    fields.append("$volume/($volume+1e-12)")
    names.append("VOLUME0")
    return fields, names


ALPHA360_EXPRESSIONS, ALPHA360_NAMES = _feature_config()

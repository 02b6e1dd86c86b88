"""On/off config keys given on the command line.

``python -m monai.bundle run ... --resume false`` hands the config the *string* ``'false'``
(python-fire parses only ``True`` / ``False`` as booleans), and a non-empty string is true, so
``--resume false`` would resume. Configs pass their switches through :func:`as_flag`.
"""

from __future__ import annotations

__all__ = ["as_flag"]

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def as_flag(value: object, key: str) -> bool:
    """``value`` of config key ``key`` as a bool: a bool, 0 / 1, or true / false, yes / no, on / off (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{key} must be true or false, got {value!r}.")

"""On/off and optional config keys given on the command line.

``python -m monai.bundle run ... --resume false`` hands the config the *string* ``'false'``
(python-fire parses only ``True`` / ``False`` as booleans), and a non-empty string is true, so
``--resume false`` would resume. The classes and functions that receive a switch read it
with :func:`as_flag`, once, where the value arrives; configs pass the raw value.

``--augmentation None`` does not reach the config at all (``monai.bundle run`` drops ``None``
overrides), so a user who wants the official default back writes ``--augmentation null``, and
the config receives the string ``'null'``. Mapping-valued keys go through :func:`as_mapping`.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["as_flag", "as_mapping", "is_unset"]

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NULL = ("null", "none", "official")
_UNSET = ("", "null", "none")


def is_unset(value: object) -> bool:
    """Whether an optional config value (e.g. a checkpoint path) is absent: None, empty, or null / none (any case)."""
    return value is None or str(value).strip().lower() in _UNSET


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


def as_mapping(value: object, key: str) -> Mapping | None:
    """``value`` of config key ``key`` as a mapping, or None (the official default) for None,
    an empty mapping or the strings null / none / official (any case)."""
    if value is None or isinstance(value, Mapping):
        return value or None
    if isinstance(value, str) and value.strip().lower() in _NULL:
        return None
    raise ValueError(f"{key} must be a mapping or null, got {value!r}.")

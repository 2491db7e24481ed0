"""Read a frozen config Struct from ``SLM_*`` environment variables.

Pure: takes the environment as a mapping, so tests and the CLI pass their own. Field
``nats_url`` is read from ``SLM_NATS_URL``; strings are converted to the field's type by
msgspec, so a bad value fails with the variable's name in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

ENV_PREFIX = "SLM_"

T = TypeVar("T", bound=msgspec.Struct)


class BadConfig(ValueError):
    """Raised when an SLM_* variable or flag has a value of the wrong type; not recoverable."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def read_config(kind: type[T], environ: Mapping[str, str], **overrides: Any) -> T:
    """Build ``kind`` from defaults, then ``SLM_*`` variables, then non-None overrides."""
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(kind):
        raw = environ.get(env_name(field.name))
        if raw is not None and raw != "":
            values[field.name] = _parse(field.type, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadConfig(f"bad {kind.__name__} setting: {exc}") from exc


def _parse(kind: Any, raw: str) -> Any:
    # Sequences come as comma-separated lists (SLM_MODELS=code,general).
    origin = getattr(kind, "__origin__", None)
    if origin in (tuple, list):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def config_env_names(kind: type[msgspec.Struct]) -> list[str]:
    """Every variable ``kind`` reads: the compose file and README table use these."""
    return [env_name(f.name) for f in msgspec.structs.fields(kind)]

"""The strict base of every typed model read from a file or a message, and the one place that
turns a pydantic :class:`~pydantic.ValidationError` into messages that name where the value came
from, the key, the value and what was expected."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import ConfigError

Loc = tuple[int | str, ...]
"""Where a value is in a document: the keys and list indexes that lead to it."""


class StrictModel(BaseModel):
    """Frozen, and an unknown key is an error (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_MISSING = object()


def lookup(document: Any, loc: Loc) -> Any:
    """The value at ``loc`` in ``document``, or a sentinel when there is none."""
    value = document
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


def expectation(error: Mapping[str, Any]) -> str:
    """What pydantic expected, in words (``a valid integer``, ``greater than or equal to 1``)."""
    message = str(error["msg"])
    for prefix in ("Value error, ", "Input should be ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def describe_errors(
    exc: ValidationError,
    document: Any,
    *,
    where: Callable[[Loc], str],
    name: Callable[[Loc], str],
    unknown: str,
) -> list[str]:
    """One line per error: ``{where}: {name} = {value!r}: {what was expected}``.

    ``document`` is what was validated (the value shown is looked up in it), ``where(loc)`` says
    which file, variable or flag the value came from, ``name(loc)`` renders the key, and
    ``unknown`` is the text for a key the model does not have.
    """
    lines = []
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            expected = unknown
        elif kind == "missing":
            expected = "expected a value (required)"
        else:
            expected = f"expected {expectation(error)}"
        if not loc:  # a rule across keys (a model validator): no single value to show
            lines.append(f"{where(loc)}: {name(loc).strip()}: {expected}")
            continue
        value = lookup(document, loc)
        if value is _MISSING:
            value = None if kind == "missing" else error.get("input")
        lines.append(f"{where(loc)}: {name(loc)} = {value!r}: {expected}")
    return lines


def dotted(loc: Sequence[int | str]) -> str:
    """``sites.0.water.dmas``: a location as a dotted key."""
    return ".".join(str(part) for part in loc)


M = TypeVar("M", bound=BaseModel)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; :class:`ConfigError` naming the file when it is missing or invalid."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_file(path: Path, model: type[M], what: str) -> M:
    """Read a TOML file into ``model``; :class:`ConfigError` naming the file, the dotted key,
    the value and what was expected."""
    raw = read_toml(path, what)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = describe_errors(
            exc, raw, where=lambda _loc: str(path), name=dotted, unknown="expected no such key"
        )
        raise ConfigError("; ".join(lines)) from None

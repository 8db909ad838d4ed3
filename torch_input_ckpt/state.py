"""The saved-state schema: versioned plain dicts, and the checks run when one is loaded."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import InputStateError

__all__ = [
    "FORMAT_VERSION",
    "check_header",
    "check_plain",
    "check_same",
    "field",
    "is_stateful",
    "not_plain",
    "to_plain",
]

# Bump when a saved state's meaning changes; loaders refuse versions they do not know.
FORMAT_VERSION = 1


def is_stateful(obj: Any) -> bool:
    """Whether ``obj`` has callable ``state_dict`` and ``load_state_dict`` (the ``Stateful`` protocol)."""
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def check_header(state: Any, kind: str, source: str) -> Mapping[str, Any]:
    """Check that ``state`` is a mapping of this ``kind`` and format version, and return it.

    Args:
        state: What was passed to ``load_state_dict``.
        kind: The expected ``"kind"`` entry, e.g. ``"ResumableSampler"``.
        source: Where the state came from (a file name, or ``"state_dict"``), for messages.

    Raises:
        InputStateError: naming the value found and the value expected.
    """
    if not isinstance(state, Mapping):
        raise InputStateError(f"{source}: expected a dict state of kind {kind!r}, got {type(state).__name__}")
    found_kind = state.get("kind")
    if found_kind != kind:
        raise InputStateError(
            f"{source}: state is of kind {found_kind!r}, expected {kind!r} "
            "(was it saved from another kind of sampler or loader?)"
        )
    version = state.get("version")
    if version != FORMAT_VERSION:
        raise InputStateError(f"{source}: state format version {version!r} is not supported, expected {FORMAT_VERSION}")
    return state


def field(state: Mapping[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    """Return ``state[key]`` after checking it is present and of the given type (bool is not an int here)."""
    if key not in state:
        raise InputStateError(f"{source}: state has no {key!r} entry (keys found: {sorted(state)})")
    value = state[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InputStateError(f"{source}: {key}={value!r} should be {_names(kinds)}")
    if not isinstance(value, kinds):
        raise InputStateError(f"{source}: {key}={value!r} should be {_names(kinds)}")
    return value


def check_same(name: str, saved: Any, current: Any, source: str, fix: str) -> None:
    """Raise when a configuration value differs between the saved state and the current object.

    The message prints both values and how to fix it, as Grain's ``_validate_state`` does.
    """
    if saved != current:
        raise InputStateError(
            f"{source}: the state was saved with {name}={saved!r}, but this pipeline has {name}={current!r}. {fix}"
        )


def to_plain(obj: Any, path: str = "state", leaf: Callable[[Any, str], Any] | None = None) -> Any:
    """``obj`` built only of JSON types (dict with str keys, list, str, int, float, bool, None), tuples as
    lists: the one walker over saved states. A value of another type is handed to ``leaf(value, path)``,
    which returns its JSON form (e.g. a tensor's) or raises; without ``leaf`` it is a ``TypeError``.

    Raises:
        TypeError: naming the key (``path``) and the type, so that a checkpoint can be written as JSON and
            read without unpickling.
    """
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Mapping):
        out = {}
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a non-string key {key!r}: states must be JSON-compatible")
            out[key] = to_plain(item, f"{path}[{key!r}]", leaf)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(item, f"{path}[{i}]", leaf) for i, item in enumerate(obj)]
    if leaf is not None:
        return leaf(obj, path)
    raise not_plain(obj, path)


def not_plain(obj: Any, path: str) -> TypeError:
    """The error for a value that is not of a JSON type."""
    return TypeError(
        f"{path} is a {type(obj).__name__}; states must be built of JSON types "
        "(dict, list, str, int, float, bool, None)"
    )


def check_plain(obj: Any, path: str = "state") -> None:
    """Raise ``TypeError`` unless ``obj`` is built only of JSON types (see :func:`to_plain`)."""
    to_plain(obj, path)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)

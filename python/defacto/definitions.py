"""Definitions as a value (the seed's ``Definitions`` object) and the way every form of
definitions reaches the jobs: a folder, or one definitions document written to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Union


class Definitions:
    """A set of definitions: entities, sources and schemas.

    Either a folder of YAML files (``Definitions.from_directory``) or the document form
    (``{"entities": {...}, "sources": {...}, "schemas": {...}}``, ``Definitions.from_dict``).
    """

    def __init__(self, document: Mapping[str, Any] | None = None, *,
                 path: Union[str, os.PathLike, None] = None) -> None:
        if (document is None) == (path is None):
            raise ValueError("give either a definitions document or a path")
        self._document = None if document is None else _plain(document)
        self._path = None if path is None else Path(path)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> "Definitions":
        return cls(document)

    @classmethod
    def from_directory(cls, path: Union[str, os.PathLike]) -> "Definitions":
        return cls(path=path)

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike]) -> "Definitions":
        """One YAML (or JSON) file in the document form."""
        return cls(path=path)

    @property
    def path(self) -> Path | None:
        """The folder or file these definitions were read from, if any."""
        return self._path

    def to_dict(self) -> dict:
        """The document form. For definitions read from files, the normalized document the
        jobs register (the same JSON `defacto definitions show` prints)."""
        if self._document is not None:
            return json.loads(json.dumps(self._document))
        raise NotImplementedError(
            "to_dict() of definitions read from files: register them and use "
            "Defacto.definitions.get(version)")

    def write(self, folder: Path) -> Path:
        """A path the jobs can read with ``--config``: the original folder or file, or the
        document written to ``folder/definitions.json``."""
        if self._path is not None:
            return self._path
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "definitions.json"
        target.write_text(json.dumps(self._document), encoding="utf-8")
        return target

    def __repr__(self) -> str:
        if self._path is not None:
            return f"Definitions.from_directory({str(self._path)!r})"
        names = sorted((self._document or {}).get("entities", {}) or {})
        return f"Definitions(entities={names})"


ConfigLike = Union[str, os.PathLike, Mapping[str, Any], Definitions]


def as_definitions(config: ConfigLike) -> Definitions:
    """Any accepted form of definitions, as a ``Definitions``."""
    if isinstance(config, Definitions):
        return config
    if isinstance(config, (str, os.PathLike)):
        return Definitions(path=config)
    if isinstance(config, Mapping):
        return Definitions(config)
    raise TypeError(
        f"config must be a folder path, a definitions dict or a Definitions object, "
        f"not {type(config).__name__}")


def _plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and scalars (JSON-serializable)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

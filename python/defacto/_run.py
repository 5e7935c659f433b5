"""Calling the Rust jobs: one ``defacto`` command line, run in-process by the native module,
with the GIL released. Errors come back as the seed's exception classes."""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from . import _native
from .errors import from_native


def run(args: Sequence[str], arrow: bool = False) -> tuple[int, bytes, Optional[bytes]]:
    """Runs ``defacto ARGS...``; returns (exit status, stdout, Arrow IPC bytes or None)."""
    try:
        return _native.call([str(a) for a in args], arrow)
    except _native.NativeError as e:
        kind, message, errors = e.args
        raise from_native(kind, message, errors) from None


def run_json(args: Sequence[str]) -> Any:
    """Runs a command that prints its result JSON, and returns that JSON."""
    _, out, _ = run(args)
    text = out.decode("utf-8").strip()
    return json.loads(text) if text else None

"""Remembers plugins that failed to load, so ``lossplug list`` can show them without importing.

Listing reads metadata only, so it cannot see an import error by itself. When a
plugin fails to load on use, the registry records the error here, keyed by
distribution, version and loss name; the listing shows it until the plugin loads
again (or a new version is installed). The file lives in
``$LOSSPLUG_CACHE_DIR`` or ``$XDG_CACHE_HOME/lossplug`` (``~/.cache/lossplug``). A
cache that cannot be read or written is ignored: it never breaks loading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CACHE_ENV = "LOSSPLUG_CACHE_DIR"
FILE_NAME = "load-failures.json"


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "lossplug")
    return Path(root) / FILE_NAME


def key(distribution: str, version: str, name: str) -> str:
    return f"{distribution}=={version}:{name}"


def read() -> dict[str, str]:
    try:
        data = json.loads(cache_file().read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write(data: dict[str, str]) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), "utf-8")
        tmp.replace(path)
    except OSError:
        pass


def record(entry_key: str, message: str) -> None:
    data = read()
    if data.get(entry_key) != message:
        data[entry_key] = message
        _write(data)


def forget(entry_key: str) -> None:
    data = read()
    if entry_key in data:
        del data[entry_key]
        _write(data)

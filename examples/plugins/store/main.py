"""`store`: a key-value store in `<data dir>/store.json`.

The handlers are plain functions, so they run in the SDK's thread pool; a lock keeps the file
consistent, and each write replaces the file atomically.
"""

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# `plugd serve` puts its own copy of the SDK on `PYTHONPATH`.
from plugd import Plugin

plugin = Plugin()
_lock = threading.Lock()
_data = None


@dataclass
class Put:
    key: str
    value: Any


@dataclass
class Key:
    key: str


def _path() -> Path:
    return plugin.data_dir / "store.json"


def _load() -> dict:
    global _data
    if _data is None:
        try:
            _data = json.loads(_path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            _data = {}
    return _data


def _save(data: dict) -> None:
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@plugin.action(description="Stores `value` under `key`", input=Put)
def put(req: Put):
    with _lock:
        data = _load()
        data[req.key] = req.value
        _save(data)
    return {"key": req.key, "stored": True}


@plugin.action(description="Returns the value stored under `key` (null when absent)", input=Key)
def get(req: Key):
    with _lock:
        data = _load()
        return {"key": req.key, "found": req.key in data, "value": data.get(req.key)}


@plugin.action(description="Removes `key`; says whether it was there", input=Key)
def delete(req: Key):
    with _lock:
        data = _load()
        found = req.key in data
        if found:
            del data[req.key]
            _save(data)
    return {"key": req.key, "deleted": found}


@plugin.action(description="Lists the stored keys")
def keys(_payload):
    with _lock:
        return sorted(_load())


if __name__ == "__main__":
    plugin.run()

"""notes manager: an xcore plugin keeping short text notes in `data/notes.json`.

Actions (``handle``): ``add {text}``, ``list``, ``get {id}``, ``fail`` (an error without a
code), ``lifecycle`` (the hooks called so far, kept in `data/lifecycle.json` across restarts)
and ``env`` (what ``env_variable`` received).
"""

import json
from pathlib import Path

DATA = Path(__file__).parent.parent / "data"
NOTES = DATA / "notes.json"
LIFECYCLE = DATA / "lifecycle.json"


def _read(path, default):
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path, value):
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


class Plugin:
    """The plugin; xcore creates it with no argument."""

    def __init__(self):
        self.env = {}

    def _record(self, hook):
        calls = _read(LIFECYCLE, [])
        calls.append(hook)
        _write(LIFECYCLE, calls)

    def env_variable(self, env):
        self.env = dict(env)
        self._record("env_variable")

    async def on_load(self):
        self._record("on_load")

    async def on_unload(self):
        self._record("on_unload")

    async def handle(self, action, payload):
        if action == "add":
            text = payload.get("text")
            if not isinstance(text, str) or not text.strip():
                return {"status": "error", "code": "invalid_input",
                        "msg": "`add` needs a non-empty `text`"}
            notes = _read(NOTES, [])
            note = {"id": max((n["id"] for n in notes), default=0) + 1, "text": text.strip()}
            notes.append(note)
            _write(NOTES, notes)
            return {"status": "ok", "note": note}
        if action == "list":
            return {"status": "ok", "title": self.env.get("NOTES_TITLE") or "Notes",
                    "notes": _read(NOTES, [])}
        if action == "get":
            for note in _read(NOTES, []):
                if note["id"] == payload.get("id"):
                    return {"status": "ok", "note": note}
            return {"status": "error", "code": "not_found",
                    "msg": f"No note with id {payload.get('id')!r}"}
        if action == "fail":
            return {"status": "error", "msg": "This action always fails"}
        if action == "lifecycle":
            return {"status": "ok", "calls": _read(LIFECYCLE, [])}
        if action == "env":
            return {"status": "ok", "env": self.env}
        return {"status": "error", "code": "unknown_action", "msg": f"Unknown action `{action}`"}

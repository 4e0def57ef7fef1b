"""A plugd wasm plugin in Python: `echo` and `wordcount`, built with componentize-py."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Error

ACTIONS = [
    {"name": "echo", "description": "Returns the payload unchanged"},
    {"name": "wordcount", "description": "Counts lines, words and characters of `text`"},
    {"name": "kaboom", "description": "Raises a ValueError, whose message reaches the caller"},
]


def _fail(code: str, message: str) -> Err:
    return Err(Error(code=code, message=message))


class Guest(exports.Guest):
    def describe(self) -> str:
        return json.dumps({"actions": ACTIONS})

    def call(self, action: str, payload: str) -> str:
        try:
            data = json.loads(payload)
        except ValueError as e:
            raise _fail("bad_payload", f"the payload is not JSON: {e}")
        if action == "echo":
            return json.dumps({"value": data})
        if action == "wordcount":
            text = data.get("text") if isinstance(data, dict) else None
            if not isinstance(text, str):
                raise _fail("bad_payload", "`text` must be a string")
            counts = {
                "lines": len(text.splitlines()),
                "words": len(text.split()),
                "chars": len(text),
            }
            host.log(host.Level.DEBUG, f"counted {counts['words']} words")
            return json.dumps({"value": counts})
        if action == "kaboom":
            # An uncaught exception: componentize-py prints the traceback to stderr and traps;
            # plugd adds the last stderr lines to the trap's message.
            raise ValueError("py kaboom")
        raise _fail("unknown_action", f"no action `{action}`")

    def on_event(self, topic: str, payload: str) -> None:
        host.log(host.Level.INFO, f"event {topic}")

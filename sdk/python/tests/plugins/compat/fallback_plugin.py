"""`Plugin.fallback` (tests/test_compat.py): the action `known`, and a fallback that is
`async def` or `def` (environment `FALLBACK`: `async` or `sync`)."""

import os
import threading

from plugd import ClientError, Plugin

plugin = Plugin()


@plugin.action()
async def known(payload):
    return "known"


if os.environ.get("FALLBACK") == "sync":
    @plugin.fallback
    def anything(action, payload):
        if action == "refuse":
            raise ClientError("nope", "refused by the fallback", status=409)
        return {"action": action, "payload": payload, "thread": threading.current_thread().name}
else:
    @plugin.fallback()
    async def anything(action, payload):
        if action == "refuse":
            raise ClientError("nope", "refused by the fallback", status=409)
        return {"action": action, "payload": payload, "thread": threading.current_thread().name}

plugin.run()

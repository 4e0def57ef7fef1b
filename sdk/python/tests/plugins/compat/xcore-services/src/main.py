"""An xcore plugin whose `Plugin.__init__` requires `services` (tests/test_compat.py)."""

from .helpers import describe


class Plugin:
    def __init__(self, services):
        self.services = services

    async def handle(self, action, payload):
        kv = self.services["kv"]
        if action == "put":
            await kv.set(payload["key"], payload["value"])
            return {"status": "ok", "stored": await kv.get(payload["key"])}
        if action == "whoami":
            return {"status": "ok", **describe(self.services)}
        if action == "plain":
            return ["not", "a", "dict"]
        if action == "raises":
            raise RuntimeError("handle broke")
        return {"status": "pending", "action": action}

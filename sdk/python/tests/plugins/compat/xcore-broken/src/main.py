"""An xcore plugin importing a module that does not exist (tests/test_compat.py)."""

import plugd_compat_missing_module  # noqa: F401


class Plugin:
    async def handle(self, action, payload):
        return {"status": "ok"}

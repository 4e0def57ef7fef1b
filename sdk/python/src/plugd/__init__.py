"""plugd: write plugd process plugins in Python.

```python
from plugd import Plugin

plugin = Plugin()

@plugin.action()
async def greet(payload):
    return {"message": f"Hello, {payload['name']}!"}

plugin.run()
```

`plugd.client` holds a small HTTP client for a running `plugd serve`; `plugd.script` is what
stand-alone scripts run by `plugd script run` use (arguments, progress, result).
"""

import importlib as _importlib

from ._version import __version__

# Names load on first use (PEP 562): `from plugd import script` in a stand-alone script must not
# pay for the plugin machinery (asyncio and the protocol) it never uses.
_LAZY = {
    "PROTOCOL_VERSION": "._plugin",
    "Kv": "._plugin",
    "KvSync": "._plugin",
    "Plugin": "._plugin",
    "TaskContext": "._plugin",
    "TaskId": "._plugin",
    "ActionResult": "._types",
    "ClientError": "._types",
    "Group": "._types",
    "HostError": "._types",
    "Notification": "._types",
    "NotificationAction": "._types",
    "Retry": "._types",
    "ValidationFailed": "._validate",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plugd' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "ActionResult",
    "ClientError",
    "Group",
    "HostError",
    "Kv",
    "KvSync",
    "Notification",
    "NotificationAction",
    "PROTOCOL_VERSION",
    "Plugin",
    "Retry",
    "TaskContext",
    "TaskId",
    "ValidationFailed",
    "__version__",
]

"""plugd: write plugd process plugins in Python.

```python
from plugd import Plugin

plugin = Plugin()

@plugin.action()
async def greet(payload):
    return {"message": f"Hello, {payload['name']}!"}

plugin.run()
```

`plugd.client` holds a small HTTP client for a running `plugd serve`.
"""

from ._plugin import PROTOCOL_VERSION, Kv, KvSync, Plugin, TaskContext, TaskId
from ._types import (ActionResult, ClientError, Group, HostError, Notification,
                     NotificationAction, Retry)
from ._validate import ValidationFailed
from ._version import __version__

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

"""For stand-alone scripts run by `plugd script run`: their arguments, progress and result.

```python
from plugd import script

args = script.args()                 # {"limit": 10}: the run's arguments
for i in range(10):
    script.progress(i / 10, f"step {i}")
script.result({"rows": 42})          # the run's JSON result, kept in its record
```

The arguments are also on stdin as one JSON object, for scripts in other languages; status
lines go to the file descriptor named by `PLUGD_SCRIPT_FD` as JSON. Outside `plugd` (run with
plain `python3`) `args()` reads stdin only when it is not a terminal, and `progress`/`result`
print to stderr, so a script can be tried by hand.
"""

import json
import os
import sys

__all__ = ["args", "progress", "result", "run_id"]

_args = None
_status = None


def _channel():
    global _status
    if _status is None:
        fd = os.environ.get("PLUGD_SCRIPT_FD")
        if fd is None:
            return None
        try:
            _status = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8", closefd=False)
        except (OSError, ValueError):
            return None
    return _status


def _send(obj):
    line = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    channel = _channel()
    if channel is None:
        print(f"[plugd] {line}", file=sys.stderr)
        return
    channel.write(line + "\n")
    channel.flush()


def args():
    """The run's arguments as a dict (`plugd script run ID --arg k=v`), read once from stdin."""
    global _args
    if _args is None:
        if os.environ.get("PLUGD_SCRIPT_FD") is None and sys.stdin.isatty():
            _args = {}
        else:
            text = sys.stdin.read()
            _args = json.loads(text) if text.strip() else {}
            if not isinstance(_args, dict):
                raise ValueError("the run's arguments are not a JSON object")
    return dict(_args)


def progress(fraction, message=None):
    """Reports progress: `fraction` from 0 to 1, and what is being done."""
    fraction = float(fraction)
    if fraction != fraction:  # NaN
        raise ValueError("progress must be a number from 0 to 1")
    obj = {"progress": min(max(fraction, 0.0), 1.0)}
    if message is not None:
        obj["message"] = str(message)
    _send(obj)


def result(value):
    """Sets the run's JSON result (the last call wins); at most 1 MiB of JSON."""
    _send({"result": value})


def run_id():
    """This run's id, or `None` outside plugd."""
    value = os.environ.get("PLUGD_RUN_ID")
    return int(value) if value else None

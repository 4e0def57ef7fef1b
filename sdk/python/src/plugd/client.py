"""A small HTTP client for a running `plugd serve` (standard library only).

```python
from plugd.client import Client

c = Client("http://127.0.0.1:8080")
c.call("hello", "greet", {"name": "Ada"})   # {"value": {"message": "Hello, Ada!"}}
c.value("hello", "greet", {"name": "Ada"})  # {"message": "Hello, Ada!"}
```

Errors come back as `PlugdError(code, message, status)` built from the server's error body
`{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

__all__ = ["Client", "PlugdError"]


class PlugdError(Exception):
    """An error answered by the plugd server (or the failure to reach it, `status` 0)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})" if status else f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class Client:
    """Calls plugins and reads plugin state over plugd's HTTP API."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def call(self, plugin: str, action: str, payload: Any = None) -> Dict[str, Any]:
        """Calls an action; returns the action result ``{"value", "notifications"?, "groups"?}``."""
        return self._request(
            "POST", f"/api/v1/plugins/{_seg(plugin)}/actions/{_seg(action)}",
            {} if payload is None else payload,
        )

    def value(self, plugin: str, action: str, payload: Any = None) -> Any:
        """Calls an action and returns only its ``value``."""
        return self.call(plugin, action, payload).get("value")

    def plugins(self) -> List[Dict[str, Any]]:
        """Lists the plugins the server knows."""
        return self._request("GET", "/api/v1/plugins")["plugins"]

    def plugin(self, name: str) -> Dict[str, Any]:
        """One plugin's state, version, actions and metrics."""
        return self._request("GET", f"/api/v1/plugins/{_seg(name)}")

    def logs(self, name: str, limit: int = 100) -> List[Dict[str, Any]]:
        """The plugin's most recent log lines."""
        return self._request("GET", f"/api/v1/plugins/{_seg(name)}/logs?limit={int(limit)}")["lines"]

    def load(self, name: str) -> Dict[str, Any]:
        return self._request("POST", f"/api/v1/plugins/{_seg(name)}/load")

    def unload(self, name: str) -> Dict[str, Any]:
        return self._request("POST", f"/api/v1/plugins/{_seg(name)}/unload")

    def reload(self, name: str) -> Dict[str, Any]:
        return self._request("POST", f"/api/v1/plugins/{_seg(name)}/reload")

    def health(self) -> Dict[str, Any]:
        return self._request("GET", "/healthz")

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data: Optional[bytes] = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _error_from(exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            raise PlugdError("unreachable", f"Cannot reach `{self.base_url}`: {exc.reason}", 0) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise PlugdError("bad_response", "The server answered with something that is not JSON",
                             200) from None


def _seg(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _error_from(status: int, raw: bytes) -> PlugdError:
    try:
        err = json.loads(raw)["error"]
        return PlugdError(str(err.get("code", "error")), str(err.get("message", "")), status)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = raw.decode("utf-8", "replace").strip()[:500]
        return PlugdError("http_error", text or f"HTTP {status}", status)

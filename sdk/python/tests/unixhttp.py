"""HTTP over a Unix socket with the standard library, and the listening socket the host hands a
plugin with an `[http]` table (fd 4)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import tempfile
from typing import Any, Dict, Optional, Tuple


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def where(to: Any) -> Tuple[str, Dict[str, str]]:
    """A socket path, or something served at one (a `Listener`, a test's `Served`): its path,
    and the `X-Plugd-Secret` header the host would send there (it gave it in `initialize`)."""
    if isinstance(to, str):
        return to, {}
    secret = getattr(to, "secret", None)
    return to.path, ({"X-Plugd-Secret": secret} if secret is not None else {})


def request(to: Any, method: str, target: str, body: Optional[bytes] = None,
            headers: Optional[Dict[str, str]] = None,
            timeout: float = 10.0) -> Tuple[int, Dict[str, str], bytes]:
    """One request on a new connection: status, headers (lower-case names), body. ``to`` is a
    socket path, or a `Listener` (then the plugin's secret goes along, as the host sends it)."""
    path, extra = where(to)
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, target, body=body, headers={**extra, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(to: Any, target: str, **kw: Any) -> Any:
    status, _, body = request(to, kw.pop("method", "GET"), target, **kw)
    assert status == 200, (status, body)
    return json.loads(body)


class Listener:
    """A listening Unix socket in a short temporary directory (socket paths are limited to 108
    bytes, and pytest's tmp_path can be longer)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="plugd-http-")
        self.path = os.path.join(self.dir, "http.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(64)
        # The secret plugd gave the plugin serving here in `initialize` (set by the test).
        self.secret: Optional[str] = None

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

"""A tiny plugd host in Python that speaks protocol v1, for testing the SDK end to end.

It spawns a plugin script as a real child process with one end of a socket pair as fd 3,
exactly as the Rust host does, and reads frames on a background thread.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

SDK_SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 10.0


def spawn(argv: List[str], cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
          data_dir: Optional[Path] = None, name: str = "test",
          http_sock: Optional[socket.socket] = None,
          handoff_sock: Optional[socket.socket] = None) -> "tuple[subprocess.Popen, socket.socket]":
    """Starts `argv` with a socket pair end as fd 3; returns the process and the host's end.

    ``http_sock`` (a listening Unix socket) becomes the child's fd 4 with `PLUGD_HTTP_FD=4`, as
    the host does for a plugin with an `[http]` table; ``handoff_sock`` (the plugin's end
    of a `SOCK_SEQPACKET` socket pair) its fd 5 with `PLUGD_HANDOFF_FD=5`."""
    host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child_fd = child_end.fileno()
    http_fd = http_sock.fileno() if http_sock is not None else -1
    handoff_fd = handoff_sock.fileno() if handoff_sock is not None else -1

    def to_fd3() -> None:  # runs in the child between fork and exec
        # Copies first (close-on-exec), so that no target clobbers another's source.
        proto = os.dup(child_fd)
        http = os.dup(http_fd) if http_fd >= 0 else -1
        handoff = os.dup(handoff_fd) if handoff_fd >= 0 else -1
        os.dup2(proto, 3)  # dup2 clears close-on-exec on the new descriptor
        if http >= 0:
            os.dup2(http, 4)
        if handoff >= 0:
            os.dup2(handoff, 5)

    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PLUGD_FD": "3",
        "PLUGD_PLUGIN": name,
        "PLUGD_PROTOCOL": "1",
        "PYTHONPATH": str(SDK_SRC),
    }
    if http_sock is not None:
        full_env["PLUGD_HTTP_FD"] = "4"
    if handoff_sock is not None:
        full_env["PLUGD_HANDOFF_FD"] = "5"
    if data_dir is not None:
        full_env["PLUGD_DATA_DIR"] = str(data_dir)
        full_env["HOME"] = str(data_dir)
    if env:
        full_env.update(env)
    proc = subprocess.Popen(
        argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, close_fds=False, preexec_fn=to_fd3,
    )
    child_end.close()
    return proc, host_end


class FakeHost:
    """Drives one plugin process: handshake, requests, and everything it sends back."""

    def __init__(self, argv: List[str], *, cwd: Optional[Path] = None,
                 data_dir: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
                 name: str = "test", http_sock: Optional[socket.socket] = None,
                 handoff_sock: Optional[socket.socket] = None) -> None:
        self.name = name
        self.data_dir = data_dir
        # As the host: a plugin with an HTTP socket gets a secret in `initialize`, and every
        # request to the socket carries it (`X-Plugd-Secret`).
        self.http_secret: Optional[str] = (
            secrets.token_hex(32) if http_sock is not None else None)
        self.proc, self.sock = spawn(argv, cwd=cwd, env=env, data_dir=data_dir, name=name,
                                     http_sock=http_sock, handoff_sock=handoff_sock)
        self.frames: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
        self.raw_lines: List[bytes] = []
        self.errors: List[str] = []
        self.notifications: List[Dict[str, Any]] = []
        self.responses: Dict[int, Dict[str, Any]] = {}
        self.requests: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self._eof = False
        self._next_id = 100
        self._wlock = threading.Lock()
        self._stdout: List[bytes] = []
        self._stderr: List[bytes] = []
        self.request_handler: Optional[Callable[[Dict[str, Any]], Any]] = None
        threading.Thread(target=self._reader, daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stdout, self._stdout), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stderr, self._stderr), daemon=True).start()

    # -- plumbing

    @staticmethod
    def _drain(stream: Any, into: List[bytes]) -> None:
        for chunk in iter(lambda: stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536), b""):
            into.append(chunk)

    @property
    def stdout(self) -> str:
        return b"".join(self._stdout).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._eof = True
                    self._cond.notify_all()
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self.raw_lines.append(line)
                try:
                    msg = json.loads(line)
                    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
                except (ValueError, AssertionError) as exc:
                    self.errors.append(f"Bad frame {line[:200]!r}: {exc}")
                    continue
                self._route(msg)

    def _route(self, msg: Dict[str, Any]) -> None:
        if "method" in msg and "id" in msg:
            with self._cond:
                self.requests.append(msg)
                if msg["method"] == "emit":
                    # Emits are requests now; tests read them beside the notifications too.
                    self.notifications.append(msg)
                self._cond.notify_all()
            if self.request_handler is not None and msg["method"] != "hello":
                self.request_handler(msg)
            elif msg["method"] == "emit":
                # The real host answers an accepted `emit` with `null`.
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
        elif "method" in msg:
            with self._cond:
                self.notifications.append(msg)
                self._cond.notify_all()
        else:
            with self._cond:
                self.responses[msg["id"]] = msg
                self._cond.notify_all()

    def send(self, obj: Dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        with self._wlock:
            self.sock.sendall(data)

    def wait(self, pred: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = pred()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"Timed out waiting for {what}; stderr:\n{self.stderr}")
                self._cond.wait(left)

    # -- protocol

    def handshake(self, *, refuse: bool = False, params: Optional[Dict[str, Any]] = None,
                  extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        hello = self.wait(lambda: self.requests and self.requests[0], what="`hello`")
        assert hello["method"] == "hello", hello
        if refuse:
            self.send({"jsonrpc": "2.0", "id": hello["id"], "error": {
                "code": -32010, "message": "Protocol 1 is not supported; this host speaks 2",
                "data": {"supported": [2]}}})
            return hello
        result = {"protocol": 1, "plugin": self.name, "version": "0.1.0",
                  "params": params or {}, "data_dir": str(self.data_dir or ""),
                  "services": ["kv"]}
        if self.http_secret is not None:
            result["http_secret"] = self.http_secret
        result.update(extra or {})
        self.send({"jsonrpc": "2.0", "id": hello["id"], "result": result})
        return hello

    def request(self, method: str, params: Any = None, id: Optional[int] = None) -> int:
        if id is None:
            self._next_id += 1
            id = self._next_id
        self.send({"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}})
        return id

    def send_raw(self, line: bytes) -> None:
        """Sends bytes as they are (e.g. a golden frame file)."""
        with self._wlock:
            self.sock.sendall(line if line.endswith(b"\n") else line + b"\n")

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params or {}})

    def start_call(self, action: str, payload: Any = None, deadline_ms: int = 5000) -> int:
        return self.request("call", {"action": action, "payload": payload, "deadline_ms": deadline_ms})

    def response(self, id: int, timeout: float = TIMEOUT) -> Dict[str, Any]:
        return self.wait(lambda: self.responses.get(id), timeout, what=f"the response to {id}")

    def call(self, action: str, payload: Any = None, deadline_ms: int = 5000) -> Dict[str, Any]:
        return self.response(self.start_call(action, payload, deadline_ms))

    def notifications_of(self, method: str) -> List[Dict[str, Any]]:
        with self._cond:
            return [n["params"] for n in self.notifications if n["method"] == method]

    def wait_notification(self, method: str, pred: Callable[[Dict[str, Any]], bool] = lambda p: True,
                          timeout: float = TIMEOUT) -> Dict[str, Any]:
        def find() -> Optional[Dict[str, Any]]:
            for n in self.notifications:
                if n["method"] == method and pred(n["params"]):
                    return n["params"]
            return None
        return self.wait(find, timeout, what=f"a `{method}` notification")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def exit_code(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close()


def python_argv(script: Path) -> List[str]:
    return [sys.executable, str(script)]


class KvModel:
    """The host's kv service as a small in-memory model, for fake hosts: commits numbered from
    1, each undoable and redoable as a whole (``undo_log`` entries are ``(commit, values before,
    values after)``, a missing key as ``None``). A fake host subclasses it and names its request
    handlers after the methods (`kv.get` → ``kv_get``)."""

    def __init__(self) -> None:
        self.kv: Dict[str, Any] = {}
        self.commits = 0
        self.undo_log: List[Any] = []
        self.redo_log: List[Any] = []

    def _apply(self, puts: Dict[str, Any], deletes: List[str]) -> Dict[str, Any]:
        keys = list(puts) + list(deletes)
        before = {k: self.kv.get(k) for k in keys}
        self.kv.update(puts)
        for k in deletes:
            self.kv.pop(k, None)
        self.commits += 1
        self.undo_log.append((self.commits, before, {k: self.kv.get(k) for k in keys}))
        self.redo_log.clear()
        return {"commit": self.commits}

    def _restore(self, values: Dict[str, Any]) -> None:
        for k, v in values.items():
            if v is None:
                self.kv.pop(k, None)
            else:
                self.kv[k] = v

    def kv_get(self, p: Dict[str, Any]) -> Dict[str, Any]:
        return {"found": True, "value": self.kv[p["key"]]} if p["key"] in self.kv else {"found": False}

    def kv_set(self, p: Dict[str, Any]) -> Dict[str, Any]:
        return self._apply({p["key"]: p["value"]}, [])

    def kv_delete(self, p: Dict[str, Any]) -> Dict[str, Any]:
        return self._apply({}, [p["key"]])

    def kv_list(self, p: Dict[str, Any]) -> Dict[str, Any]:
        keys = sorted(k for k in self.kv if k.startswith(p.get("prefix", "")))
        return {"items": [{"key": k, "value": self.kv[k]} for k in keys], "next": None}

    def kv_commit(self, p: Dict[str, Any]) -> Dict[str, Any]:
        return self._apply(p.get("puts", {}), p.get("deletes", []))

    def kv_undo(self, p: Dict[str, Any]) -> Dict[str, Any]:
        if not self.undo_log:
            return {"commit": None}
        entry = self.undo_log.pop()
        self._restore(entry[1])
        self.redo_log.append(entry)
        return {"commit": entry[0]}

    def kv_redo(self, p: Dict[str, Any]) -> Dict[str, Any]:
        if not self.redo_log:
            return {"commit": None}
        entry = self.redo_log.pop()
        self._restore(entry[2])
        self.undo_log.append(entry)
        return {"commit": entry[0]}

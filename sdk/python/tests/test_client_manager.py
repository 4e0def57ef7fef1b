"""examples/plugins/client-manager: its FastAPI app run as a plugin (fake host, listening socket
on fd 4, as plugd runs it) and, for comparison, by uvicorn alone on a Unix socket; every
endpoint with real HTTP and WebSocket clients.

Needs the example's requirements (fastapi, uvicorn, websockets) in the test interpreter."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import shutil
import socket
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import unix_connect

from fakehost import FakeHost
from unixhttp import Listener, UnixHTTPConnection, get_json, request

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "plugins" / "client-manager"
# The example directory is a package (signed, staged): leave no __pycache__ in it.
NO_PYCACHE = {"PYTHONDONTWRITEBYTECODE": "1"}


def ok(resp):
    assert "error" not in resp, resp
    return resp["result"]


class Served:
    """The app on a Unix socket `path`; `host` is the fake host when run as a plugin."""

    def __init__(self, path, host=None, proc=None):
        self.path = path
        self.host = host
        self.proc = proc
        # What the host sends with every request: the secret the plugin's `hello` gave.
        self.secret = host.http_secret if host is not None else None
        self.headers = {"X-Plugd-Secret": self.secret} if self.secret else {}

    def ws(self, target, **kw):
        headers = {**self.headers, **kw.pop("additional_headers", {})}
        return unix_connect(self.path, f"ws://localhost{target}", open_timeout=5,
                            additional_headers=headers, **kw)

    def wait_clients(self, ids):
        deadline = time.monotonic() + 5
        while sorted(c["id"] for c in get_json(self, "/api/clients")) != sorted(ids):
            assert time.monotonic() < deadline, get_json(self, "/api/clients")
            time.sleep(0.02)


@pytest.fixture
def as_plugin(tmp_path):
    listener = Listener()
    data = tmp_path / "data"
    data.mkdir()
    h = FakeHost([sys.executable, "main.py"], cwd=EXAMPLE, data_dir=data, name="client-manager",
                 http_sock=listener.sock, env=NO_PYCACHE)
    try:
        h.handshake()
        assert h.wait(lambda: h.notifications_of("started"), what="`started`")[0] == {}, h.stderr
        yield Served(listener.path, host=h)
    finally:
        h.kill()
        listener.close()
    assert not h.errors, h.errors


@pytest.fixture
def standalone():
    d = tempfile.mkdtemp(prefix="plugd-cm-")
    path = os.path.join(d, "http.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "client_manager:create_app", "--uds", path,
         "--log-level", "warning"],
        cwd=EXAMPLE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **NO_PYCACHE})
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        yield Served(path, proc=proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["plugin", "uvicorn"])
def served(request):
    return request.getfixturevalue("as_plugin" if request.param == "plugin" else "standalone")


def test_health_and_clients(served):
    assert get_json(served, "/health") == {"status": "ok", "clients": 0}
    assert get_json(served, "/api/clients") == []


def test_websocket_clients_register_and_get_broadcasts(served):
    with served.ws("/ws/alice") as alice, served.ws("/ws/bob") as bob:
        served.wait_clients(["alice", "bob"])
        assert get_json(served, "/health") == {"status": "ok", "clients": 2}
        clients = get_json(served, "/api/clients")
        assert {c["id"] for c in clients} == {"alice", "bob"}
        assert all(set(c) == {"id", "connected_at", "messages"} for c in clients)

        alice.send("hello everyone")
        for ws in (alice, bob):
            assert json.loads(ws.recv(timeout=5)) == {"from": "alice", "message": "hello everyone"}
        bob.send("hi alice")
        for ws in (alice, bob):
            assert json.loads(ws.recv(timeout=5)) == {"from": "bob", "message": "hi alice"}
        alice.send(b"binary is not broadcast")
        alice.send("after binary")
        assert json.loads(bob.recv(timeout=5))["message"] == "after binary"
        assert json.loads(alice.recv(timeout=5))["message"] == "after binary"

        # A second connection with a connected id is refused.
        with served.ws("/ws/alice") as dup:
            with pytest.raises(ConnectionClosed) as closed:
                dup.recv(timeout=5)
            assert closed.value.rcvd.code == 4409
        assert {c["id"]: c["messages"] for c in get_json(served, "/api/clients")} == {
            "alice": 2, "bob": 1}

        if served.host is not None:
            # The actions share the app's state.
            h = served.host
            listed = ok(h.call("clients"))["value"]
            assert {c["id"] for c in listed} == {"alice", "bob"}
            assert ok(h.call("broadcast", {"message": "from the host"}))["value"] == 2
            for ws in (alice, bob):
                assert json.loads(ws.recv(timeout=5)) == {"from": None, "message": "from the host"}
            assert h.call("broadcast", {})["error"]["code"] == -32002

    served.wait_clients([])  # unregistered on disconnect
    if served.host is not None:
        assert ok(served.host.call("clients"))["value"] == []
        assert ok(served.host.call("broadcast", {"message": "nobody"}))["value"] == 0


def test_websocket_echo(served):
    with served.ws("/ws-echo") as ws:
        for msg in ("one", "two", b"\x00\x01bytes", "x" * 100_000):
            ws.send(msg)
            assert ws.recv(timeout=5) == msg


def test_server_sent_events(served):
    conn = UnixHTTPConnection(served.path)
    try:
        began = time.monotonic()
        conn.request("GET", "/api/stream?n=4&interval=60", headers=served.headers)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-type").startswith("text/event-stream")
        arrivals, events = [], []
        while True:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
                arrivals.append(time.monotonic() - began)
    finally:
        conn.close()
    assert events == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    assert arrivals[-1] - arrivals[0] >= 0.15  # one every 60 ms, as they are made
    assert request(served, "GET", "/api/stream?n=0")[::2] == (200, b"")  # ends at once
    status, _, body = request(served, "GET", "/api/stream")
    assert status == 200 and body.count(b"data: ") == 3  # n defaults to 3
    assert request(served, "GET", "/api/stream?n=-1")[0] == 422


def test_streaming_upload(served):
    chunk = b"x" * 65536

    def body():
        for _ in range(48):  # 3 MiB, chunked
            yield chunk

    conn = UnixHTTPConnection(served.path, timeout=30)
    try:
        conn.request("POST", "/api/upload", body=body(), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked", **served.headers})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == {"bytes": 48 * 65536}
    finally:
        conn.close()
    assert get_json(served, "/api/upload", method="POST", body=b"12345") == {"bytes": 5}
    assert get_json(served, "/api/upload", method="POST", body=b"") == {"bytes": 0}


def test_prefixes_reach_the_app_as_root_path(as_plugin):
    # What the host adds when it proxies /client-manager/docs or /plugins/client-manager/docs.
    for prefix in ("/client-manager", "/plugins/client-manager"):
        status, _, body = request(as_plugin, "GET", "/docs",
                                  headers={"X-Forwarded-Prefix": prefix})
        assert status == 200 and f"'{prefix}/openapi.json'".encode() in body, body[:2000]
        spec = get_json(as_plugin, "/openapi.json", headers={"X-Forwarded-Prefix": prefix})
        assert spec["servers"] == [{"url": prefix}]
        assert "/api/clients" in spec["paths"]
    with as_plugin.ws("/ws/carol", additional_headers={"X-Forwarded-Prefix": "/client-manager"}):
        as_plugin.wait_clients(["carol"])


def test_manifest_lists_the_actions_the_code_offers(as_plugin):
    import re
    toml = (EXAMPLE / "plugin.toml").read_text()
    declared = re.findall(r'^\[\[actions\]\]\nname = "([^"]+)"', toml, re.M)
    offered = [a["name"] for a in as_plugin.host.requests[0]["params"]["actions"]]
    assert sorted(offered) == sorted(declared) == ["broadcast", "clients"]
    assert re.search(r'^\[http\]\nmount = "/client-manager"\nexpose = 10000\nhealth = "/health"$',
                     toml, re.M)


def test_shutdown_closes_clients_and_exits(as_plugin):
    h = as_plugin.host
    assert "WARNING" not in h.stderr and "ERROR" not in h.stderr, h.stderr
    with as_plugin.ws("/ws/dave") as ws:
        as_plugin.wait_clients(["dave"])
        h.notify("shutdown")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1012  # service restart
    assert h.exit_code() == 0
    h.wait_notification("log", lambda p: "stopping after 1 client" in p["message"])

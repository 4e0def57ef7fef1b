"""`plugd.client` against a tiny `http.server` stub of the plugd API."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from plugd.client import Client, PlugdError


class Stub(BaseHTTPRequestHandler):
    seen = []

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        Stub.seen.append(("GET", self.path, None))
        if self.path == "/api/v1/plugins":
            self.reply(200, {"plugins": [{"name": "hello", "state": "running"}], "problems": []})
        elif self.path == "/api/v1/plugins/hello/logs?limit=5":
            self.reply(200, {"plugin": "hello", "lines": [{"line": "hi"}]})
        elif self.path == "/healthz":
            self.reply(200, {"status": "ok"})
        elif self.path == "/broken":
            self.reply(500, b"<html>oops</html>", "text/html")
        else:
            self.reply(404, {"error": {"code": "plugin_not_found", "message": "No plugin `x`"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        Stub.seen.append(("POST", self.path, body))
        if self.path == "/api/v1/plugins/hello/actions/greet":
            if "name" not in body:
                self.reply(400, {"error": {"code": "bad_payload", "message": "name: Field required"}})
            else:
                self.reply(200, {"value": {"message": f"Hello, {body['name']}!"}})
        elif self.path == "/api/v1/plugins/hello/reload":
            self.reply(200, {"name": "hello", "state": "running"})
        else:
            self.reply(404, {"error": {"code": "action_not_found", "message": "No action"}})


@pytest.fixture
def client():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    Stub.seen.clear()
    yield Client(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5)
    server.shutdown()
    server.server_close()


def test_call_and_value(client):
    assert client.call("hello", "greet", {"name": "Ada"}) == {"value": {"message": "Hello, Ada!"}}
    assert client.value("hello", "greet", {"name": "Bo"}) == {"message": "Hello, Bo!"}
    assert Stub.seen[0] == ("POST", "/api/v1/plugins/hello/actions/greet", {"name": "Ada"})


def test_plugins_logs_health_lifecycle(client):
    assert client.plugins() == [{"name": "hello", "state": "running"}]
    assert client.logs("hello", limit=5) == [{"line": "hi"}]
    assert client.health() == {"status": "ok"}
    assert client.reload("hello")["state"] == "running"


def test_error_body_becomes_plugd_error(client):
    with pytest.raises(PlugdError) as info:
        client.call("hello", "greet", {})
    e = info.value
    assert (e.code, e.message, e.status) == ("bad_payload", "name: Field required", 400)
    with pytest.raises(PlugdError) as info:
        client.plugin("x")
    assert (info.value.code, info.value.status) == ("plugin_not_found", 404)


def test_error_without_json_body(client):
    with pytest.raises(PlugdError) as info:
        client._request("GET", "/broken")
    assert info.value.status == 500
    assert info.value.code == "http_error"
    assert "oops" in info.value.message


def test_unreachable_server():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(PlugdError) as info:
        Client(f"http://127.0.0.1:{port}", timeout=2).plugins()
    assert info.value.code == "unreachable"
    assert info.value.status == 0

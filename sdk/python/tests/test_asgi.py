"""`plugin.serve_asgi(app)`: a plain ASGI app served by uvicorn on the listening socket the host
hands over as fd 4 (`PLUGD_HTTP_FD`), beside the actions, with `root_path` from
`X-Forwarded-Prefix`, a start that fails with the app, and a graceful stop on `shutdown`.

Needs `uvicorn` and `websockets` in the test interpreter (see sdk/python/README.md)."""

import array
import asyncio
import json
import os
import socket
import threading
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect, unix_connect

from conftest import PLUGINS, ROOT
from plugd import Plugin
from plugd._asgi import NO_HTTP_FD, NO_SECRET, NO_UVICORN, ForwardedPrefix
from unixhttp import Listener, get_json, request

ASGI = PLUGINS / "asgi_plugin.py"


def ok(resp):
    assert "error" not in resp, resp
    return resp["result"]


def started(h, timeout=10.0):
    return h.wait(lambda: h.notifications_of("started"), timeout, what="`started`")[0]


def wait_stderr(h, text, timeout=10.0, stream="stderr"):
    """Waits until the plugin wrote ``text`` to stderr (or stdout), which another thread
    reads; returns all it wrote there."""
    deadline = time.monotonic() + timeout
    while text not in getattr(h, stream):
        assert time.monotonic() < deadline, f"{text!r} not in {stream}:\n{getattr(h, stream)}"
        time.sleep(0.02)
    return getattr(h, stream)


@pytest.fixture
def listener():
    sock = Listener()
    yield sock
    sock.close()


@pytest.fixture
def asgi_host(make_host, listener):
    def start(env=None, http=True):
        h = make_host(ASGI, env=env, http_sock=listener.sock if http else None)
        listener.secret = h.http_secret  # requests go with it, as the host sends them
        return h
    return start


def test_http_and_actions_are_served_together(asgi_host, listener):
    h = asgi_host()
    assert h.requests[0]["params"]["on_start"] is True  # the host waits for `started`
    assert started(h) == {}

    # Straight to the socket (no prefix): the app is at the root.
    got = get_json(listener, "/hello?x=1")
    assert got["path"] == "/hello" and got["root_path"] == "" and got["raw_path"] == "/hello"
    assert got["lifespan"] == "started after hook ran"  # after the `on_start` hooks

    # Through the host: the prefix comes in X-Forwarded-Prefix and becomes the root_path (and,
    # as with uvicorn's --root-path, the front of `path`).
    got = get_json(listener, "/api/items", method="POST", body=b'{"a": 1}', headers={
        "X-Forwarded-Prefix": "/plugins/test", "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "plugd.example:8080",
        "Content-Type": "application/json"})
    assert got["method"] == "POST" and got["body"] == '{"a": 1}'
    assert got["root_path"] == "/plugins/test"
    assert got["path"] == "/plugins/test/api/items"
    assert got["raw_path"] == "/plugins/test/api/items"
    assert got["scheme"] == "https"
    assert got["client"][0] == "203.0.113.9"
    assert got["host"] == "plugd.example:8080"

    got = get_json(listener, "/x", headers={"X-Forwarded-Prefix": "/client-manager/"})
    assert got["root_path"] == "/client-manager" and got["path"] == "/client-manager/x"

    # A WebSocket gets the same treatment.
    with unix_connect(listener.path, "ws://localhost/ws/a%20b",
                      additional_headers={"X-Forwarded-Prefix": "/client-manager",
                                          "X-Plugd-Secret": listener.secret}) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "websocket"
        assert hello["root_path"] == "/client-manager"
        assert hello["path"] == "/client-manager/ws/a b"
        ws.send("hi")
        assert ws.recv(timeout=5) == "echo: hi"

    # The actions answer meanwhile, from the same event loop.
    value = ok(h.call("http_state"))["value"]
    assert value["requests"] == 3 and value["websockets"] == 1

    # uvicorn's log lines go to stderr (warnings and errors by default: see the failing
    # startup below), never to the host as `log` notifications.
    assert "connection open" not in h.stderr and "Uvicorn running" not in h.stderr
    assert not [p for p in h.notifications_of("log") if "uvicorn" in p.get("logger", "")]


def test_only_requests_with_the_hosts_secret_reach_the_app(asgi_host, listener):
    # Anything of the host's uid can connect to the socket's path (another plugin, when the
    # sandbox's uid layer is off): only requests carrying the secret the host gave in
    # `initialize` are served, and the app never sees the header.
    h = asgi_host()
    secret = h.http_secret
    assert "http_secret" not in h.requests[0]["params"]  # the host's, never the plugin's
    assert started(h) == {}
    got = get_json(listener, "/mine")
    assert got["path"] == "/mine" and "x-plugd-secret" not in got["header_names"]

    refused = [
        request(listener.path, "GET", "/admin", headers={"X-Forwarded-For": "127.0.0.1"}),
        request(listener.path, "GET", "/admin", headers={"X-Plugd-Secret": secret[:-1] + "?"}),
        request(listener.path, "GET", "/admin", headers={"X-Plugd-Secret": ""}),
    ]
    # Twice (the right one and another): refused too, whichever a reader would take.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(listener.path)
        raw.sendall(b"GET /admin HTTP/1.1\r\nhost: x\r\nx-plugd-secret: " + secret.encode()
                    + b"\r\nx-plugd-secret: other\r\nconnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    for status, _, body in refused:
        assert status == 403, (status, body)
        assert json.loads(body)["error"]["code"] == "forbidden"
    with pytest.raises(InvalidStatus) as ws_refused:
        with unix_connect(listener.path, "ws://localhost/ws/x", open_timeout=5):
            pass
    assert ws_refused.value.response.status_code == 403

    # None of them reached the app.
    value = ok(h.call("http_state"))["value"]
    assert value["requests"] == 1 and value["websockets"] == 0
    h.notify("shutdown")
    assert h.exit_code() == 0


def test_the_secret_of_the_golden_initialize_is_the_one_checked(make_host, listener):
    init = json.loads((ROOT / "crates/plugd-protocol/tests/golden/initialize_http.json")
                      .read_text())["result"]
    h = make_host(ASGI, http_sock=listener.sock, extra=init)
    assert started(h) == {}
    listener.secret = init["http_secret"]
    assert get_json(listener, "/golden")["path"] == "/golden"
    listener.secret = h.http_secret  # the fake host's own: not the one in force
    assert request(listener, "GET", "/golden")[0] == 403


def test_without_a_secret_from_the_host_the_start_fails_naming_the_fix(make_host, listener):
    # Serving without one would serve anything of the host's uid: refused, not fail-open.
    h = make_host(ASGI, http_sock=listener.sock, extra={"http_secret": None})
    assert started(h) == {"error": NO_SECRET}
    assert "`http_secret`" in NO_SECRET and "hint: use a plugd as new as this SDK" in NO_SECRET


def test_shutdown_finishes_requests_in_flight_then_runs_the_stop_hooks(asgi_host, listener):
    h = asgi_host()
    assert started(h) == {}
    result = {}

    def slow():
        result["resp"] = request(listener, "GET", "/slow?sleep_ms=600")

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10
    while ok(h.call("http_state"))["value"]["requests"] < 1:  # the slow request is in the app
        assert time.monotonic() < deadline, h.stderr
        time.sleep(0.02)
    began = time.monotonic()
    h.notify("shutdown")
    assert h.exit_code() == 0
    t.join(5)
    status, _, body = result["resp"]
    assert status == 200 and json.loads(body)["path"] == "/slow"  # it finished
    assert time.monotonic() - began < 5
    out = wait_stderr(h, "on_stop ran after 1 requests", stream="stdout")
    # The app's lifespan shutdown, then the plugin's `on_stop` hooks.
    assert out.index("lifespan shutdown") < out.index("on_stop ran after 1 requests"), out


def test_a_failing_app_startup_fails_the_start(asgi_host):
    h = asgi_host(env={"FAIL_STARTUP": "1"})
    assert started(h) == {
        "error": "the HTTP app's startup failed: RuntimeError: the database is down"}
    wait_stderr(h, "the database is down")  # uvicorn logged the traceback
    h.notify("shutdown")
    assert h.exit_code() == 0
    assert "on_stop ran" not in h.stdout  # stop hooks run only after a successful start


def test_without_uvicorn_the_start_fails_naming_the_fix(asgi_host):
    h = asgi_host(env={"NO_UVICORN": "1"})
    assert started(h) == {"error": NO_UVICORN}
    assert NO_UVICORN == ("serve_asgi needs uvicorn in the plugin's environment; hint: add "
                          "`uvicorn` to `[python] requirements` or requirements.txt")
    h.notify("shutdown")
    assert h.exit_code() == 0


def test_without_an_http_table_the_start_fails_naming_the_fix(asgi_host):
    h = asgi_host(http=False)
    error = started(h)["error"]
    assert error == NO_HTTP_FD
    assert "`PLUGD_HTTP_FD` is not set" in error and "add `[http]` to plugin.toml" in error
    h.notify("shutdown")
    assert h.exit_code() == 0


def test_a_server_that_stops_by_itself_ends_the_plugin(asgi_host, listener):
    # uvicorn's `limit_max_requests` (an option passed through) stops serving after one
    # request: the plugin exits 1 so that the host restarts it.
    h = asgi_host(env={"MAX_REQUESTS": "1"})
    assert started(h) == {}
    assert get_json(listener, "/once")["path"] == "/once"
    assert h.exit_code() == 1
    h.wait_notification("log", lambda p: "The HTTP server stopped" in p["message"])
    wait_stderr(h, "on_stop ran after 1 requests", stream="stdout")


class HandoffChannel:
    """A `SOCK_SEQPACKET` socket pair, as the host makes for a plugin: `sock` is the plugin's
    end (its fd 5), `host` the host's."""

    def __init__(self) -> None:
        self.host, self.sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def hand_over(self, head: bytes, client: socket.socket) -> None:
        """What the host does: one record, the head with the client's socket attached."""
        self.host.sendmsg([head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [client.fileno()]))])

    def close(self) -> None:
        self.host.close()
        self.sock.close()


@pytest.fixture
def handoff():
    sock = HandoffChannel()
    yield sock
    sock.close()


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, "the client closed before its head was complete"
        data += chunk
    return data


def test_a_handed_over_websocket_is_served_from_its_first_byte(make_host, listener, handoff):
    h = make_host(ASGI, http_sock=listener.sock, handoff_sock=handoff.sock)
    listener.secret = h.http_secret
    hello = h.requests[0]["params"]
    golden = json.loads((ROOT / "crates/plugd-protocol/tests/golden/hello_http_handoff.json")
                        .read_text())["params"]
    assert hello["http_handoff"] is golden["http_handoff"] is True
    assert started(h) == {}
    # Nothing the plugin starts inherits the host's channel, its HTTP socket or fd 5.
    assert ok(h.call("inherited_fds"))["value"] == {"3": False, "4": False, "5": False}

    # The test plays plugd: a real client connects over TCP and sends its handshake; the "host"
    # reads the head, rewrites it as the proxy forwards a request (prefix stripped,
    # X-Forwarded-* set) and hands head and socket over. The plugin answers the handshake.
    front = socket.create_server(("127.0.0.1", 0))
    port = front.getsockname()[1]
    got = {}

    def client():
        with connect(f"ws://127.0.0.1:{port}/plugins/test/ws/a%20b") as ws:
            got["hello"] = json.loads(ws.recv(timeout=5))
            ws.send("hi")
            got["echo"] = ws.recv(timeout=5)

    t = threading.Thread(target=client)
    t.start()
    conn, _ = front.accept()
    head = _read_head(conn)
    assert head.endswith(b"\r\n\r\n"), "a client sends nothing after its head before the 101"
    request_line, rest = head.split(b"\r\n", 1)
    assert request_line == b"GET /plugins/test/ws/a%20b HTTP/1.1"
    forwarded = (b"GET /ws/a%20b HTTP/1.1\r\n" + rest[:-2]
                 + b"x-forwarded-prefix: /plugins/test\r\nx-forwarded-for: 203.0.113.7\r\n"
                 + b"x-plugd-secret: " + listener.secret.encode() + b"\r\n\r\n")
    handoff.hand_over(forwarded, conn)
    conn.close()  # the plugin holds its own copy now
    front.close()
    t.join(10)
    assert got["hello"]["type"] == "websocket"
    assert got["hello"]["root_path"] == "/plugins/test"
    assert got["hello"]["path"] == "/plugins/test/ws/a b"
    assert got["hello"]["client"][0] == "203.0.113.7"
    assert got["echo"] == "echo: hi"
    assert ok(h.call("http_state"))["value"]["websockets"] == 1

    # A malformed record (no descriptor) is logged and dropped; the plugin serves on.
    handoff.host.send(b"GET / HTTP/1.1\r\n\r\n")
    wait_stderr(h, "Ignored a malformed hand-off (18 bytes, 0 descriptors)")
    assert get_json(listener, "/after")["path"] == "/after"

    # A stop closes handed-over connections like the others.
    h.notify("shutdown")
    assert h.exit_code() == 0


def test_without_a_handoff_socket_hello_does_not_offer_one(asgi_host):
    h = asgi_host()
    assert "http_handoff" not in h.requests[0]["params"]
    assert started(h) == {}
    h.notify("shutdown")
    assert h.exit_code() == 0


def test_without_websocket_support_hello_does_not_offer_handoffs(make_host, listener, handoff):
    # uvicorn with `ws="none"` would answer a handshake as a plain request and keep the
    # connection open: the plugin must not ask for connections it cannot switch.
    h = make_host(ASGI, env={"WS": "none"}, http_sock=listener.sock, handoff_sock=handoff.sock)
    assert "http_handoff" not in h.requests[0]["params"]
    assert started(h) == {}
    h.notify("shutdown")
    assert h.exit_code() == 0


HANDSHAKE = (b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
             b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
             b"x-forwarded-for: 203.0.113.7\r\n\r\n")


class _InProcess:
    """uvicorn (via the SDK's server class) in this process's event loop with a `Handoff` on
    a `HandoffChannel`: the hand-off's edge cases, driven step by step."""

    def __init__(self, ws: str, tmp: str, seen: list) -> None:
        import uvicorn
        from plugd._asgi import _server_class

        async def app(scope, receive, send):
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
                return
            seen.append((scope["path"], scope["client"][0],
                         dict(scope["headers"]).get(b"cookie")))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

        self.http = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.http.bind(os.path.join(tmp, "http.sock"))
        self.http.listen()
        config = uvicorn.Config(app, fd=self.http.fileno(), ws=ws, lifespan="off",
                                log_config=None, proxy_headers=True, forwarded_allow_ips="*")
        self.server = _server_class(uvicorn)(config)

    async def start(self, listener: "HandoffChannel"):
        from plugd._asgi import Handoff
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        return Handoff(self.server, os.dup(listener.sock.fileno()), loop)

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        self.http.close()


async def _read_all(loop, sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (a reset too: a server that closes with
    bytes of the client's unread resets the connection after its answer)."""
    out = b""
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def _tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as front:
        client = socket.create_connection(front.getsockname())
        conn, _ = front.accept()
    client.setblocking(False)
    return client, conn


@pytest.mark.parametrize("ws", ["none", "auto"])
def test_a_handed_over_connection_carries_one_request(tmp_path, handoff, ws):
    # Whatever the plugin answers a handshake with, when it is not a `101` the connection
    # closes after it: bytes the client sent after its head are never served as a request of
    # their own (the host never judged them, and their X-Forwarded-For and cookies would be
    # taken as they came). The head here lacks the `close` the host adds: the SDK adds it.
    seen = []
    served = _InProcess(ws, str(tmp_path), seen)

    async def main():
        loop = asyncio.get_running_loop()
        ho = await served.start(handoff)
        client, conn = _tcp_pair()
        client.sendall(b"GET /admin HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 127.0.0.1\r\n"
                       b"cookie: plugd_session=SECRET\r\n\r\n")
        handoff.hand_over(HANDSHAKE, conn)
        conn.close()
        out = await _read_all(loop, client)
        client.close()
        ho.close()
        await served.stop()
        return out

    out = asyncio.run(main())
    assert out.count(b"HTTP/1.1 ") == 1, out
    if ws == "none":
        assert out.startswith(b"HTTP/1.1 200 "), out
        assert seen == [("/ws", "203.0.113.7", None)]
    else:
        assert out.startswith(b"HTTP/1.1 403 "), out
        assert seen == []


def test_a_stop_answers_the_handoffs_already_sent_and_refuses_other_descriptors(
        tmp_path, handoff, caplog):
    served = _InProcess("auto", str(tmp_path), [])

    async def main():
        loop = asyncio.get_running_loop()
        ho = await served.start(handoff)
        # A record with a pipe instead of a client's TCP socket: not adopted.
        r, w = os.pipe()
        handoff.host.sendmsg([HANDSHAKE], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", [r]))])
        os.close(r)
        for _ in range(100):
            if "not a TCP socket" in caplog.text:
                break
            await asyncio.sleep(0.01)
        os.close(w)
        # Two hand-offs queued on the socket when the stop comes (the loop has not run since):
        # each client gets a 503 that says why, not a connection closed without a word.
        clients = []
        for _ in range(2):
            client, conn = _tcp_pair()
            handoff.hand_over(HANDSHAKE, conn)
            conn.close()
            clients.append(client)
        ho.close()
        outs = [await _read_all(loop, c) for c in clients]
        for c in clients:
            c.close()
        await served.stop()
        return outs

    outs = asyncio.run(main())
    assert "Ignored a malformed hand-off (" in caplog.text
    assert "1 descriptors, not a TCP socket)" in caplog.text
    for out in outs:
        assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), out
        assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "plugin_not_running"


def test_a_closed_channel_ends_the_handoffs_quietly(tmp_path, handoff, caplog):
    # The host closed its end (it stopped using this child): the plugin stops reading the
    # channel (no busy loop on an end-of-file), logs nothing, and serves on.
    served = _InProcess("auto", str(tmp_path), [])

    async def main():
        loop = asyncio.get_running_loop()
        ho = await served.start(handoff)
        handoff.host.close()
        await asyncio.sleep(0.05)
        still_read = loop.remove_reader(ho.channel.fileno())
        ho.close()
        await served.stop()
        return still_read

    assert asyncio.run(main()) is False
    assert "hand-off" not in caplog.text


def test_only_heads_written_as_the_host_writes_them_are_adopted():
    # A folded line or bare LF ends could hide the `close` the SDK adds from the HTTP parser.
    from plugd._asgi import _plain_head
    assert _plain_head(HANDSHAKE)
    assert not _plain_head(HANDSHAKE.replace(b"upgrade\r\nupgrade", b"upgrade\r\n x\r\nupgrade"))
    assert not _plain_head(HANDSHAKE.replace(b"\r\n", b"\n"))
    assert not _plain_head(HANDSHAKE.replace(b"host: h", b"host h"))
    assert not _plain_head(HANDSHAKE[:-2])


def test_the_closing_head_adds_close_once():
    from plugd._asgi import _closing_head
    assert b"connection: upgrade, close\r\n" in _closing_head(HANDSHAKE)
    closed = HANDSHAKE.replace(b"upgrade\r\nupgrade", b"Upgrade, Close\r\nupgrade")
    assert _closing_head(closed) == closed
    bare = b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"
    assert _closing_head(bare) == b"GET / HTTP/1.1\r\nconnection: close\r\nhost: h\r\n\r\n"


async def _noop_app(scope, receive, send):
    pass


def test_serve_asgi_argument_errors():
    p = Plugin()
    with pytest.raises(TypeError, match="ASGI app"):
        p.serve_asgi(None)
    with pytest.raises(TypeError, match="`port`, `host`|`host`, `port`"):
        p.serve_asgi(_noop_app, port=8000, host="0.0.0.0")
    p.serve_asgi(_noop_app)
    with pytest.raises(RuntimeError, match="already called"):
        p.serve_asgi(_noop_app)


def test_forwarded_prefix_sets_the_root_path():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    mw = ForwardedPrefix(app)

    def run(headers, kind="http", path="/a/b", raw=b"/a/b"):
        scope = {"type": kind, "path": path, "raw_path": raw, "root_path": "",
                 "headers": [(b"host", b"sock")] + headers}
        asyncio.run(mw(scope, None, None))
        return seen[-1]

    s = run([(b"x-forwarded-prefix", b"/plugins/cm")])
    assert (s["root_path"], s["path"], s["raw_path"]) == ("/plugins/cm", "/plugins/cm/a/b",
                                                          b"/plugins/cm/a/b")
    s = run([(b"x-forwarded-prefix", b"/my%20app/")], kind="websocket")
    assert (s["root_path"], s["path"], s["raw_path"]) == ("/my app", "/my app/a/b",
                                                          b"/my%20app/a/b")
    for bad in (b"", b"/", b"relative", b"\xff"):
        s = run([(b"x-forwarded-prefix", bad)])
        assert (s["root_path"], s["path"]) == ("", "/a/b"), bad
    s = run([(b"x-forwarded-host", b"example.org, proxy")])
    assert s["headers"] == [(b"x-forwarded-host", b"example.org, proxy"), (b"host", b"example.org")]
    s = run([])
    assert (s["root_path"], s["headers"]) == ("", [(b"host", b"sock")])

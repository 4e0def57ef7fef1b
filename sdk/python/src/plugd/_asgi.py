"""`plugin.serve_asgi(app)`: an ASGI app served by uvicorn on the listening socket the host hands
over as fd `PLUGD_HTTP_FD`, in the same event loop as the protocol.

WebSockets skip the host's relay: the host hands the client's own TCP connection over on the
hand-off channel (fd `PLUGD_HANDOFF_FD`, a socket pair), with the request head rewritten as the
proxy would forward it, and uvicorn serves the connection from its first byte (`Handoff`).

Every request the host sends carries the secret `initialize` gave (`X-Plugd-Secret`);
`ForwardedPrefix` refuses any request without it and strips it, so nothing else that reaches
the socket's path (another process of the same uid, when the sandbox's uid layer is off) is
served or has its `X-Forwarded-*` headers trusted.

uvicorn comes from the plugin's own environment and is imported only when `serve_asgi` is
called: the SDK itself stays standard library only. The host proxies `/plugins/NAME/...` and
`/MOUNT/...` to the socket with the prefix stripped and says which prefix in
`X-Forwarded-Prefix`; `ForwardedPrefix` turns that into the ASGI `root_path`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import stat
import sys
from typing import Any, Callable, Dict, Optional
from urllib.parse import unquote

HTTP_FD_VAR = "PLUGD_HTTP_FD"
HANDOFF_FD_VAR = "PLUGD_HANDOFF_FD"
SECRET_HEADER = b"x-plugd-secret"

# The largest hand-off record: the host sends a request head of at most 16 KiB.
_MAX_RECORD = 64 * 1024

NO_HTTP_FD = (
    "serve_asgi needs the HTTP socket plugd gives a plugin with an `[http]` table, but "
    f"`{HTTP_FD_VAR}` is not set; hint: add `[http]` to plugin.toml (for example "
    '`[http]` with `mount = "/NAME"`)')
NO_SECRET = (
    "serve_asgi needs the secret plugd sends in `initialize` (`http_secret`) to tell its "
    "requests from others', and this host sent none; hint: use a plugd as new as this SDK")
NO_UVICORN = (
    "serve_asgi needs uvicorn in the plugin's environment; hint: add `uvicorn` to "
    "`[python] requirements` or requirements.txt")

# Seconds an idle keep-alive connection stays open (see `AsgiServer._config`).
KEEP_ALIVE = 40

# Options `serve_asgi` decides itself: where to listen, and no reloader or workers.
_RESERVED = ("fd", "uds", "host", "port", "reload", "workers")


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_FORBIDDEN = (
    b'{"error":{"code":"forbidden","message":"This socket serves the plugd host only: the '
    b'request lacks the plugin\'s X-Plugd-Secret"}}')


class ForwardedPrefix:
    """Pure ASGI middleware in front of the plugin's app.

    - `http` and `websocket` with a `secret`: a request whose `X-Plugd-Secret` is not that
      secret (exactly once) is refused (`403`; a WebSocket is closed before it is accepted,
      which uvicorn answers `403`) and the app never sees it; the header is removed before the
      app sees the request.
    - `http` and `websocket`: `X-Forwarded-Prefix: /plugins/NAME` (set by the host, which
      drops one a client sent) becomes the scope's `root_path`, and is put in front of `path`
      and `raw_path` as uvicorn's own `--root-path` does (Starlette routes on `path` minus
      `root_path`), so `request.url_for(...)` and FastAPI's docs links carry the prefix.
      `X-Forwarded-Host` replaces the `host` header, so absolute URLs name the host's address.
    - `lifespan`: remembers why the app's startup failed, for the plugin's `started`.
    """

    def __init__(self, app: Callable[..., Any], secret: Optional[str] = None) -> None:
        self.app = app
        self.secret = secret.encode("ascii") if secret is not None else None
        self.startup_error: Optional[str] = None

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> Any:
        kind = scope.get("type")
        if kind == "http" or kind == "websocket":
            if self.secret is not None and not _take_secret(scope, self.secret):
                return await _forbid(kind, send)
            prefix = host = None
            for name, value in scope.get("headers") or ():
                if name == b"x-forwarded-prefix":
                    prefix = value
                elif name == b"x-forwarded-host":
                    host = value
            if prefix is not None:
                _apply_prefix(scope, prefix)
            if host is not None:
                _apply_host(scope, host)
            return await self.app(scope, receive, send)
        if kind == "lifespan":
            return await self._lifespan(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _lifespan(self, scope: Dict[str, Any], receive: Any, send: Any) -> Any:
        failed: Optional[str] = None

        async def watch(message: Dict[str, Any]) -> Any:
            nonlocal failed
            if message.get("type") == "lifespan.startup.failed":
                failed = str(message.get("message") or "")
                lines = [ln for ln in failed.strip().splitlines() if ln.strip()]
                # Starlette sends the whole traceback: its last line is the exception.
                self.startup_error = lines[-1].strip() if lines else (
                    "the app's lifespan startup failed")
            return await send(message)

        try:
            return await self.app(scope, receive, watch)
        except BaseException as exc:
            if failed is not None:  # the exception that failed the startup: say that one
                self.startup_error = _error_text(exc)
            raise


def _take_secret(scope: Dict[str, Any], secret: bytes) -> bool:
    """Whether the request carries `secret` as its one `X-Plugd-Secret` (compared in constant
    time); the header is removed from the scope either way."""
    headers = scope.get("headers") or []
    given = [v for n, v in headers if n == SECRET_HEADER]
    if given:
        scope["headers"] = [(n, v) for n, v in headers if n != SECRET_HEADER]
    return len(given) == 1 and hmac.compare_digest(given[0], secret)


async def _forbid(kind: str, send: Any) -> None:
    if kind == "websocket":
        # Closed before it is accepted: uvicorn answers the handshake `403`.
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": 403, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_FORBIDDEN)).encode())]})
    await send({"type": "http.response.body", "body": _FORBIDDEN})


def _apply_prefix(scope: Dict[str, Any], raw: bytes) -> None:
    raw = raw.strip().rstrip(b"/")
    if not raw.startswith(b"/"):
        return  # empty (served at the root) or not a path: leave the scope as it is
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return
    prefix = unquote(text)
    scope["root_path"] = prefix + (scope.get("root_path") or "")
    scope["path"] = prefix + scope.get("path", "")
    raw_path = scope.get("raw_path")
    if raw_path is not None:
        scope["raw_path"] = raw + raw_path


def _apply_host(scope: Dict[str, Any], value: bytes) -> None:
    value = value.split(b",", 1)[0].strip()
    if not value:
        return
    headers = [(n, v) for n, v in scope["headers"] if n != b"host"]
    headers.append((b"host", value))
    scope["headers"] = headers


def _stderr_logging() -> None:
    """uvicorn's log lines go to stderr (the host captures it as the plugin's log), not through
    the root logger's handler that sends records to the host over the protocol. Warnings and
    errors only unless `log_level` says otherwise: the host records stderr lines as warnings,
    and uvicorn's info lines (one per WebSocket connection) would flood the log."""
    logger = logging.getLogger("uvicorn")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)  # `log_level` sets the levels of its children
    logger.propagate = False


def check_options(options: Dict[str, Any]) -> None:
    reserved = [k for k in _RESERVED if k in options]
    if reserved:
        raise TypeError(
            f"serve_asgi does not take {', '.join(f'`{k}`' for k in reserved)}: the app is "
            f"served on the socket plugd hands over (`{HTTP_FD_VAR}`)")


class AsgiServer:
    """One uvicorn server for `plugin.serve_asgi`."""

    def __init__(self, app: Any, shutdown_timeout: Optional[float],
                 options: Dict[str, Any]) -> None:
        # Set from `initialize` (`set_secret`); every request the host sends carries it.
        self.app = ForwardedPrefix(app)
        self.shutdown_timeout = shutdown_timeout
        self.options = options
        self.server: Any = None
        self.task: Optional["asyncio.Task[None]"] = None
        self.ready = False
        self.stopping = False
        # Why `serve_asgi` cannot work here, found when it was called; reported at start.
        self.error: Optional[str] = None
        self.uvicorn: Any = None
        self.handoff_fd: Optional[int] = None
        handoff_text = os.environ.get(HANDOFF_FD_VAR)
        if handoff_text and handoff_text.isdigit():
            self.handoff_fd = int(handoff_text)
            _not_inherited(self.handoff_fd)
        self._handoff: Optional[Handoff] = None
        fd_text = os.environ.get(HTTP_FD_VAR)
        if not fd_text:
            self.error = NO_HTTP_FD
            return
        try:
            self.fd = int(fd_text)
        except ValueError:
            self.error = f"`{HTTP_FD_VAR}={fd_text}` is not a file descriptor number"
            return
        _not_inherited(self.fd)
        try:
            import uvicorn  # the plugin's environment, not the SDK's
        except ImportError:
            self.error = NO_UVICORN
            return
        self.uvicorn = uvicorn

    def set_secret(self, secret: Any) -> None:
        """The host's `initialize.http_secret`: requests without it are refused from now on."""
        if isinstance(secret, str) and secret and secret.isascii() and secret.isprintable():
            self.app.secret = secret.encode("ascii")

    @property
    def handoff(self) -> bool:
        """Whether the host may hand WebSockets over (said in `hello`): only when uvicorn can
        answer a handshake with `101` (a WebSocket library is there and `ws` is not "none")."""
        return (self.error is None and self.handoff_fd is not None
                and _serves_websockets(self.options.get("ws", "auto")))

    def _config(self) -> Any:
        options: Dict[str, Any] = {
            "lifespan": "auto",
            "log_config": None,
            "access_log": False,
            # Every request that reaches the app came from the host (`ForwardedPrefix` refuses
            # the others), which replaces any X-Forwarded-For / -Proto a client sent: trust
            # them (a Unix socket peer has no address to check).
            "proxy_headers": True,
            "forwarded_allow_ips": "*",
            "timeout_graceful_shutdown": self.shutdown_timeout,
            # Idle connections from the host's pool (which drops them after 30 s) stay open
            # longer than that, so it is always the host that closes one, never a race with a
            # request it is sending (uvicorn's default is 5 s).
            "timeout_keep_alive": KEEP_ALIVE,
        }
        options.update(self.options)
        if options.get("log_config") is None:
            _stderr_logging()
        return self.uvicorn.Config(self.app, fd=self.fd, **options)

    async def start(self, track: Callable[["asyncio.Task[None]"], None]) -> Optional[str]:
        """Starts serving in a task (given to ``track`` at once); returns None once uvicorn
        accepts connections, else why it could not (the app's lifespan startup failed, the
        socket is unusable, ...)."""
        if self.error is not None:
            return self.error
        if self.app.secret is None:
            # Never serve without it: anything of the host's uid could be the client.
            return NO_SECRET
        loop = asyncio.get_running_loop()
        try:
            config = self._config()
            server = _server_class(self.uvicorn)(config)
        except Exception as exc:
            return f"serve_asgi could not configure uvicorn: {_error_text(exc)}"
        ready: "asyncio.Future[None]" = loop.create_future()
        server.plugd_ready = ready
        self.server = server
        self.task = loop.create_task(self._serve(server))
        track(self.task)
        await asyncio.wait({self.task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            self.ready = True
            if self.handoff and self.handoff_fd is not None:
                try:
                    self._handoff = Handoff(server, self.handoff_fd, loop)
                except OSError as exc:
                    return f"serve_asgi cannot use the hand-off channel: {_error_text(exc)}"
            return None
        if server.should_exit and self.stopping:
            return "the plugin was stopped while its HTTP app was starting"
        failure = None
        if not self.task.cancelled():
            exc = self.task.exception()
            if exc is not None and not isinstance(exc, _StartupFailed):
                failure = _error_text(exc)
        if self.app.startup_error:
            return f"the HTTP app's startup failed: {self.app.startup_error}"
        return f"the HTTP app failed to start: {failure or 'see the log'}"

    async def _serve(self, server: Any) -> None:
        try:
            await server.serve()
        except SystemExit as exc:
            # uvicorn calls `sys.exit(3)` when the app's lifespan startup failed: it must end
            # this task, not the process.
            raise _StartupFailed(f"uvicorn exited ({exc.code})") from None

    def stop(self) -> None:
        """Graceful stop: no new connections, requests in flight finish (at most
        `shutdown_timeout` seconds, then they are cancelled), then the app's lifespan
        shutdown runs."""
        self.stopping = True
        if self._handoff is not None:
            self._handoff.close()
            self._handoff = None
        if self.server is not None:
            self.server.should_exit = True


def _not_inherited(fd: int) -> None:
    """No program the plugin starts inherits `fd` (a child that kept the hand-off channel open
    would hide the plugin's death from the host; one with fd 4 could accept its requests)."""
    with contextlib.suppress(OSError):
        os.set_inheritable(fd, False)


def _serves_websockets(ws: Any) -> bool:
    """Whether uvicorn configured with `ws` has a WebSocket protocol (as `Config.load` picks
    it: "auto" is websockets, else wsproto, else none)."""
    if not isinstance(ws, str):
        return ws is not None  # a protocol class
    try:
        from uvicorn.config import WS_PROTOCOLS
        from uvicorn.importer import import_from_string
        name = WS_PROTOCOLS.get(ws)
        return name is not None and import_from_string(name) is not None
    except Exception:  # an unknown name, a library that fails to import
        return False


def _plain_head(head: bytes) -> bool:
    """Whether `head` is written as the host writes one: CRLF line ends only, no folded
    (continued) header lines, a colon in every header line. Anything else could make
    `_closing_head`'s `close` land where the HTTP parser does not read it."""
    if not head.endswith(b"\r\n\r\n") or b"\n" in head.replace(b"\r\n", b""):
        return False
    lines = head[:-4].split(b"\r\n")
    return all(line[:1] not in (b" ", b"\t") and b":" in line for line in lines[1:])


def _closing_head(head: bytes) -> bytes:
    """`head` with `close` among its `Connection` tokens (the host puts it there; this holds
    for any sender). A handed-over connection carries one request: after an answer other than
    `101` uvicorn closes it, so nothing a client sends after the handshake is ever read as
    another request, unjudged by the host's auth and with its own `X-Forwarded-For` trusted."""
    lines = head.split(b"\r\n")
    for i in range(1, len(lines)):
        line = lines[i]
        if not line:
            break
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"connection":
            if b"close" in (t.strip().lower() for t in value.split(b",")):
                return head
            lines[i] = line.rstrip() + b", close"
            return b"\r\n".join(lines)
    lines.insert(1, b"connection: close")
    return b"\r\n".join(lines)


def _is_tcp(fd: int) -> bool:
    """Whether `fd` is a TCP socket (what the host hands over), not a file, pipe or Unix
    socket someone else could have attached to a record."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        with socket.socket(fileno=os.dup(fd)) as sock:
            return (sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM)
    except OSError:
        return False


# The answer to a WebSocket handed over while the plugin stops: what the host answers for a
# plugin that is not running.
_STOPPING = (
    b'{"error":{"code":"plugin_not_running","message":"The plugin is stopping and takes no '
    b'new connection; hint: retry in a moment"}}')
STOPPING_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_STOPPING)).encode() + b"\r\nconnection: close\r\n\r\n"
    + _STOPPING)


def _refuse(fd: int) -> None:
    """Answers a handed-over client 503 and closes it (a stop, not an EOF without a word)."""
    try:
        with socket.socket(fileno=fd) as client:
            client.setblocking(False)
            client.send(STOPPING_RESPONSE)
            # Bytes of the client's left unread would make the close a reset, which can
            # destroy the 503 before the client reads it.
            client.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                while client.recv(65536):
                    pass
    except OSError:
        pass


class Handoff:
    """Adopts the client connections the host hands over (WebSockets, so the host relays no
    frame): each arrives as one record on fd `PLUGD_HANDOFF_FD` (a `SOCK_SEQPACKET` socket
    pair whose other end only the host holds), the request head as the proxy would forward it
    (prefix stripped, `X-Forwarded-*` and `X-Plugd-Secret` set, plugd's credentials removed),
    with the client's TCP socket attached (`SCM_RIGHTS`). The head was already read from that
    socket: it is fed to a fresh uvicorn protocol before the socket's own bytes, and uvicorn
    serves the connection as if it had accepted it (it counts in the server's connections, so
    a stop closes it like the others).
    """

    def __init__(self, server: Any, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.channel = socket.socket(fileno=fd)
        if self.channel.type != socket.SOCK_SEQPACKET:
            self.channel.detach()
            raise OSError(f"fd {fd} is not a SOCK_SEQPACKET socket")
        self.channel.setblocking(False)
        self.tasks: "set[asyncio.Task[Any]]" = set()
        self.closing = False
        loop.add_reader(self.channel.fileno(), self._on_records)

    def close(self) -> None:
        """No more hand-offs (a stop). Records the host already sent (queued on the channel)
        are answered `503` rather than dropped, so no client sees its connection end without a
        word; the host finds the channel closed from then on and relays."""
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.channel.fileno())
        # The host's sends fail from now on (it answers 502 itself), so no record can arrive
        # between the drain below and the close and be dropped with its client unanswered.
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RD)
        self._on_records()  # the queued ones: `closing` makes `_adopt` refuse them
        self.channel.close()

    def _on_records(self) -> None:
        while self._receive():
            pass

    def _receive(self) -> bool:
        """Reads one record and adopts (or refuses) its client; False when none is queued or
        the host closed the channel."""
        try:
            # Close-on-exec: a subprocess the plugin starts must not keep clients' sockets.
            head, ancdata, flags, _ = self.channel.recvmsg(
                _MAX_RECORD, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            _log_error("Cannot read hand-offs any more: %s", _error_text(exc))
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.channel.fileno())
            return False
        fds = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % 4
                fds.extend(int.from_bytes(data[i:i + 4], sys.byteorder, signed=True)
                           for i in range(0, usable, 4))
        if not head and not fds:
            # The host's end closed (it is stopping): nothing more will come.
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.channel.fileno())
            return False
        if (len(fds) != 1 or not head or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
                or not _plain_head(head) or not _is_tcp(fds[0])):
            for fd in fds:
                os.close(fd)
            _log_error("Ignored a malformed hand-off (%d bytes, %d descriptors%s)",
                       len(head), len(fds), ", not a TCP socket" if len(fds) == 1 else "")
            return True
        try:
            self._adopt(fds[0], _closing_head(head))
        except Exception as exc:  # the client's socket is closed, never left to the GC
            _log_error("Cannot serve a handed-over connection: %s", _error_text(exc))
        return True

    def _adopt(self, fd: int, head: bytes) -> None:
        if self.closing or self.server.should_exit:
            _refuse(fd)
            return
        client = socket.socket(fileno=fd)
        try:
            self._serve(client, head)
        except BaseException:
            client.close()
            raise

    def _serve(self, client: socket.socket, head: bytes) -> None:
        server = self.server
        client.setblocking(False)
        config = server.config
        try:
            app_state = server.lifespan.state
        except AttributeError:  # pragma: no cover - uvicorn < 0.23
            app_state = None

        def factory() -> Any:
            if app_state is not None:
                protocol = config.http_protocol_class(
                    config=config, server_state=server.server_state, app_state=app_state)
            else:  # pragma: no cover - uvicorn < 0.23
                protocol = config.http_protocol_class(
                    config=config, server_state=server.server_state)
            made = protocol.connection_made

            def connection_made(transport: Any) -> None:
                made(transport)
                # Before the transport's first read (it is scheduled after this call).
                protocol.data_received(head)

            protocol.connection_made = connection_made
            return protocol

        task = self.loop.create_task(self.loop.connect_accepted_socket(factory, sock=client))
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._adopted(t, client))

    def _adopted(self, task: "asyncio.Task[Any]", client: socket.socket) -> None:
        self.tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            client.close()
            if not task.cancelled():
                _log_error("Cannot serve a handed-over connection: %s",
                           _error_text(task.exception()))  # type: ignore[arg-type]


def _log_error(fmt: str, *args: Any) -> None:
    logging.getLogger("uvicorn.error").error(fmt, *args)


class _StartupFailed(Exception):
    pass


_server_classes: Dict[int, Any] = {}


def _server_class(uvicorn: Any) -> Any:
    cls = _server_classes.get(id(uvicorn))
    if cls is not None:
        return cls

    class Server(uvicorn.Server):  # type: ignore[misc, name-defined]
        """uvicorn's server without its signal handlers: SIGTERM/SIGINT keep what they do in
        every plugd plugin (the host sends SIGTERM only at the end of the stop grace, and a
        stop is the protocol's `shutdown`)."""

        plugd_ready: "Optional[asyncio.Future[None]]" = None

        def capture_signals(self) -> Any:  # uvicorn >= 0.29
            return contextlib.nullcontext()

        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            ready = self.plugd_ready
            if self.started and ready is not None and not ready.done():
                ready.set_result(None)

    _server_classes[id(uvicorn)] = Server
    return Server

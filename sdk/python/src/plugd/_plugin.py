"""The `Plugin` object: action and event registration, and the protocol loop that serves them.

The loop is a plain asyncio event loop with the protocol socket (fd `PLUGD_FD`) registered
through `loop.add_reader`: each readable event receives what is there, splits complete lines and
dispatches them. Replies are written straight to the socket when nothing is queued, so a trivial
call costs one `recv`, one `json.loads`, one `json.dumps` and one `send`.

`async def` handlers are started eagerly: the coroutine is stepped once inside the read callback
and, when it finishes without suspending (the common case for cheap actions), answered at once,
without creating a Task or going round the loop again. A coroutine that does suspend is handed,
already started, to a Task. On Python 3.12+ this is asyncio's own eager task start, so
`asyncio.current_task()` is right from the first line of the handler; on 3.9-3.11 the SDK steps
the coroutine itself and hands the suspended coroutine to a Task through `_Resumed`.

On 3.9-3.11 a handler suspended on its own host request (`await plugin.kv.get(...)`,
`plugin.call`, `plugin.request`, an awaited `emit`) is not handed to a Task either: it waits as a
`_Waiting`, and the read callback that receives the host's answer resumes it at once, so a
request costs its round trip and no extra loop turns. Anything else it awaits (a sleep, a lock,
`gather`), and any cancellation (its deadline, the host's `cancel`, the connection closing),
hands it to a Task from there, which then behaves exactly as if it had been one all along.
"""

from __future__ import annotations

import asyncio
import collections.abc
import concurrent.futures
import contextvars
import dataclasses
import enum
import functools
import inspect
import json
import logging
import os
import pathlib
import re
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ._types import (ActionResult, ClientError, Group, HostError, Notification,
                     NotificationAction)
from ._validate import ValidationFailed, make_validator
from ._version import __version__

if TYPE_CHECKING:  # imported when `serve_asgi` is called
    from ._asgi import AsgiServer

__all__ = ["Kv", "KvSync", "Plugin", "PROTOCOL_VERSION", "TaskContext", "TaskId"]

PROTOCOL_VERSION = 1

# JSON-RPC error codes of protocol v1 (docs/protocol.md).
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
UNKNOWN_ACTION = -32001
BAD_PAYLOAD = -32002
ACTION_FAILED = -32003
CLIENT_ERROR = -32004

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 3
# The HTTP server of `serve_asgi` stopped by itself: the host restarts the plugin as after a crash.
EXIT_HTTP_STOPPED = 1

DEFAULT_WORKERS = 16
# How long a sync handler's `plugin.emit` waits for the host's answer (it answers at once).
_EMIT_SYNC_TIMEOUT = 30.0
# How long a blocking twin (`plugin.kv_sync`, `service_sync`, `env`) waits: the host answers
# every request within 30 s, with an error if need be.
_SYNC_TIMEOUT = 60.0
# `call_sync` waits for what is left of the call being handled plus this margin (the host ends
# the callee's call at that deadline), or `_CALL_SYNC_TIMEOUT` outside a call.
_CALL_SYNC_MARGIN = 10.0
_CALL_SYNC_TIMEOUT = 620.0
_READ_SIZE = 256 * 1024
_ACTION_NAME = re.compile(r"^[a-z_][a-z0-9_.\-]{0,63}$")

# The call being served, set in the context each call's handler runs in: its id (for `progress`
# and `log`), its `chain` as received (a list of plugin names, or None) and its deadline
# (`time.monotonic()`, or None); the chain and the deadline become the `context` of the
# `plugin.call`s its handler makes. One variable, so a call costs one context update.
_current: contextvars.ContextVar[Optional[Tuple[int, Any, Optional[float]]]] = \
    contextvars.ContextVar("plugd_call", default=None)


def _current_call_id() -> Optional[int]:
    current = _current.get()
    return None if current is None else current[0]


def _current_context() -> Optional[Tuple[List[str], Optional[float]]]:
    """The chain (only its strings) and deadline of the call being served, if any."""
    current = _current.get()
    if current is None:
        return None
    _, chain, deadline = current
    chain = [c for c in chain if isinstance(c, str)] if isinstance(chain, list) else []
    return chain, deadline


# Python 3.12+ starts a Task eagerly itself (and keeps `current_task()` right while doing so).
_NATIVE_EAGER = sys.version_info >= (3, 12)

_stderr_lock = threading.Lock()


def _stderr(msg: str) -> None:
    with _stderr_lock:
        try:
            sys.stderr.write(f"plugd: {msg}\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - stderr closed
            pass


def _json_default(o: Any) -> Any:
    if isinstance(o, (ActionResult, Notification, NotificationAction, Group)):
        return o.to_json()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    dump = getattr(o, "model_dump", None)  # pydantic v2
    if dump is not None:
        return dump(mode="json")
    if hasattr(o, "dict") and hasattr(o, "__fields__"):  # pydantic v1
        return json.loads(o.json())
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, (set, frozenset)):
        return list(o)
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


# One encoder for everything: compact separators, no NaN (the host's JSON parser rejects it).
_checked_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False,
                                   default=_json_default).encode
# `JSONEncoder.encode` builds a new C encoder (and a dict to detect cycles) on every call, which
# costs as much as encoding a small reply. This one is built once, without the cycle check: it
# holds no state, so worker threads may share it. A cycle ends in `RecursionError`, and then the
# checked encoder runs again to raise its `ValueError`, so callers see exactly what they did.
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_fast_encode = _c_encoder(None, _json_default, json.encoder.encode_basestring_ascii, None, ":",
                          ",", False, False, False) if _c_encoder is not None else None


def _encode(o: Any) -> str:
    if _fast_encode is None:  # pragma: no cover - a Python without the C accelerator
        return _checked_encode(o)
    try:
        return "".join(_fast_encode(o, 0))
    except RecursionError:
        return _checked_encode(o)


# `json.loads(bytes)` detects the encoding, decodes, and matches whitespace with two regexes
# around the C scanner: most of its time for a small frame. A frame is one line of UTF-8 that is
# one JSON value, so the scanner alone does; anything else (leading or trailing text, another
# encoding) goes through `json.loads` for its exact error.
_scan_once = json.decoder.JSONDecoder().scan_once


def _decode(line: bytes) -> Any:
    try:
        text = line.decode()
        value, end = _scan_once(text, 0)
    except (UnicodeDecodeError, StopIteration):
        return json.loads(line)
    if end != len(text):
        return json.loads(line)
    return value


class _Resumed(collections.abc.Coroutine):
    """A coroutine already stepped once, handed to a Task that continues it.

    The first `send` from the Task returns what the coroutine yielded during its first step
    (the future it waits on); everything after is forwarded, so cancellation and exceptions
    reach the handler exactly as if the Task had started it.
    """

    __slots__ = ("_coro", "_first", "_started")

    def __init__(self, coro: Any, first: Any) -> None:
        self._coro = coro
        self._first = first
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            first, self._first = self._first, None
            return first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:  # type: ignore[override]
        self._started = True
        self._first = None
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - legacy signature

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:  # pragma: no cover - only driven by a Task
        return self._coro.__await__()


class _Waiting:
    """An eagerly started handler (Python < 3.12) suspended on its own host request: the read
    callback that receives the answer steps it again (see `Plugin._step`), without a Task."""

    __slots__ = ("call", "coro", "ctx", "timer", "fut", "request", "running", "cancel")

    def __init__(self, call: int, coro: Any, ctx: contextvars.Context) -> None:
        self.call = call
        self.coro = coro
        self.ctx = ctx
        self.timer: Any = None  # the deadline's `TimerHandle`
        self.fut: Any = None  # the request future it waits on
        self.request = 0  # that request's id
        self.running = False  # being stepped right now
        self.cancel = False  # cancelled while being stepped: becomes a cancelled Task after


class _Emitted:
    """What `Plugin.emit` returns on the loop thread: awaiting it raises the host's refusal."""

    __slots__ = ("future", "awaited")

    def __init__(self, future: "asyncio.Future[Any]") -> None:
        self.future = future
        self.awaited = False

    def __await__(self) -> Any:
        self.awaited = True
        return self.future.__await__()


@dataclasses.dataclass
class _Action:
    name: str
    description: str
    fn: Callable[..., Any]
    is_async: bool
    validate: Optional[Callable[[Any], Any]]
    eager: bool


@dataclasses.dataclass
class _Subscription:
    pattern: str
    prefix: Optional[str]  # "image." for "image.*", "" for "*", None for an exact topic
    fn: Callable[..., Any]
    is_async: bool

    def matches(self, topic: str) -> bool:
        if self.prefix is None:
            return topic == self.pattern
        return topic.startswith(self.prefix)


@dataclasses.dataclass
class _Hook:
    """An `on_start` or `on_stop` hook."""
    kind: str  # "on_start" or "on_stop"
    fn: Callable[..., Any]
    is_async: bool
    with_plugin: bool  # it takes one positional parameter: the `Plugin`

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def _make_hook(kind: str, fn: Any) -> _Hook:
    if not callable(fn):
        raise TypeError(f"`@plugin.{kind}` decorates a function, not {type(fn).__name__}")
    positional = required = 0
    varargs = False
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = []  # type: ignore[assignment]
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            varargs = True
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
            if p.default is p.empty:
                required += 1
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            required += 2  # cannot be called with what a hook gets
    if required > 1:
        raise TypeError(
            f"`{kind}` hook `{getattr(fn, '__name__', fn)}` needs {required} arguments; hint: a "
            "hook takes no argument, or one (the plugin)")
    return _Hook(kind=kind, fn=fn, is_async=inspect.iscoroutinefunction(fn),
                 with_plugin=varargs or positional >= 1)


class _HostLogHandler(logging.Handler):
    """Sends log records to the host as `log` notifications (buffered until connected)."""

    _guard = threading.local()

    def __init__(self, plugin: "Plugin") -> None:
        super().__init__(logging.NOTSET)
        self._plugin = plugin
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._guard, "active", False):
            return  # a record logged while sending a record: drop, never recurse
        self._guard.active = True
        try:
            msg = self.format(record)
            no = record.levelno
            level = ("debug" if no < logging.INFO else "info" if no < logging.WARNING
                     else "warning" if no < logging.ERROR else "error")
            params: Dict[str, Any] = {"level": level, "message": msg, "logger": record.name}
            call = getattr(record, "plugd_call", None)
            if call is None:
                call = _current_call_id()
            if call is not None:
                params["call"] = call
            self._plugin._send_log(params)
        except Exception:  # pragma: no cover - never let logging break a handler
            pass
        finally:
            self._guard.active = False


class Plugin:
    """A plugd process plugin.

    Register actions with `@plugin.action()`, event handlers with `@plugin.on_event(topic)`,
    lifecycle hooks with `@plugin.on_start` / `@plugin.on_stop`, then call `plugin.run()`. The
    name, version, params and data dir come from the host at start.
    """

    def __init__(self, *, max_workers: Optional[int] = None, eager: bool = True) -> None:
        self.name: str = os.environ.get("PLUGD_PLUGIN", "")
        self.version: str = ""
        self.params: Dict[str, Any] = {}
        self.data_dir: pathlib.Path = pathlib.Path(os.environ.get("PLUGD_DATA_DIR") or ".")
        self.services: List[str] = []
        # `initialize.limits` (`call_timeout_ms`, `concurrency`, `memory`, `cpu_ms`).
        self.limits: Dict[str, Any] = {}
        self.log: logging.Logger = logging.getLogger(self.name or "plugin")
        self.log.setLevel(logging.DEBUG)
        # The host's key-value store: `await plugin.kv.get(...)`, or `plugin.kv_sync.get(...)`
        # in a sync handler.
        self.kv: Kv = Kv(self)
        self.kv_sync: KvSync = KvSync(self, self.kv)
        self._env_cache: Dict[str, Optional[str]] = {}

        self._actions: Dict[str, _Action] = {}
        self._fallback: Optional[_Action] = None  # `fallback`: serves the actions not registered
        self._subscriptions: List[_Subscription] = []
        self._params_handler: Optional[Tuple[Callable[..., Any], bool]] = None
        self._start_hooks: List[_Hook] = []
        self._stop_hooks: List[_Hook] = []
        self._started_ok = True  # the `on_start` hooks succeeded (or there are none)
        self._asgi: Optional[AsgiServer] = None  # `serve_asgi`
        self._finish_code = EXIT_OK  # the exit code once everything in flight is done
        self._max_workers = max_workers
        self._eager = eager

        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        self._sock: Optional[socket.socket] = None
        self._fd = -1
        self._connected = False  # handshake answered: notifications may flow
        self._closed = False  # the socket is gone: nothing more can be sent
        self._rbuf = bytearray(_READ_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rparts: List[bytes] = []
        self._wbuf = bytearray()
        self._batch: Optional[List[str]] = None
        self._next_id = 0
        self._hello_id = -1
        self._pending: Dict[int, asyncio.Future] = {}
        self._inflight: Dict[int, Any] = {}  # call id -> Task, _Waiting, or None for a thread
        self._waiting: Dict[int, _Waiting] = {}  # request id -> the handler awaiting its answer
        # The request sent last and its id: a handler that yields this future waits on it.
        self._last_request: Any = None
        self._last_request_id = 0
        self._expired: set = set()
        self._background: set = set()  # event and params handlers still running
        self._threads_busy = 0
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._shutting_down = False
        self._exit: Optional[asyncio.Future] = None
        self._exit_code = EXIT_OK
        self._log_backlog: List[Dict[str, Any]] = []
        self._log_handler = _HostLogHandler(self)
        self._tasks = _Tasks(self)  # `@plugin.task` handlers and the `task.run`s in flight

    # ------------------------------------------------------------------ registration

    def action(self, name: Any = None, description: Optional[str] = None,
               input: Any = None, eager: Optional[bool] = None) -> Any:
        """Registers an action handler (`async def` or plain `def`).

        ``input`` is a dataclass or a pydantic model class: the payload is validated into an
        instance of it (or rejected with error -32002) and the handler receives the instance;
        without it the handler receives the payload as decoded JSON.

        ``eager`` (async handlers): start the coroutine inside the read callback and answer at
        once when it does not suspend (the default). On Python < 3.12 the handler then runs
        outside a Task until its first suspension, so `asyncio.current_task()` is None there;
        handlers whose code names `current_task`, `timeout`, `timeout_at` or `TaskGroup` are
        started in a Task automatically, and ``eager=False`` forces it for any other.
        """
        if callable(name) and description is None and input is None and eager is None:
            return self.action()(name)  # used as `@plugin.action` without parentheses

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            action_name = name or fn.__name__
            if not _ACTION_NAME.match(action_name):
                raise ValueError(
                    f"Invalid action name `{action_name}`: use lower-case letters, digits, `_`, "
                    "`.` and `-`, starting with a letter or `_`, at most 64 characters"
                )
            if action_name in self._actions:
                raise ValueError(f"Action `{action_name}` is registered twice")
            desc = description
            if desc is None:
                doc = inspect.getdoc(fn) or ""
                desc = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
            self._actions[action_name] = _Action(
                name=action_name,
                description=desc,
                fn=fn,
                is_async=inspect.iscoroutinefunction(fn),
                validate=make_validator(input) if input is not None else None,
                eager=self._eager if eager is None else bool(eager),
            )
            if eager is None and _needs_task(fn):
                self._actions[action_name].eager = self._eager and _NATIVE_EAGER
            return fn

        return register

    def fallback(self, fn: Any = None, *, eager: Optional[bool] = None) -> Any:
        """Registers the catch-all handler ``(action, payload)`` (`async def` or plain `def`) that
        serves every call whose action is not registered with `action`, instead of the error
        -32001 (unknown action); its return value (or exception) is the answer, as for an action.

        For plugins whose actions are only known at run time (the `plugd.compat` runners). The
        host sends a process plugin only the actions its `hello` announced, unless it announced
        none: a fallback is reached through the host when the plugin registers no `action` at
        all. The payload is not validated; ``eager`` is as in `action`. A plugin has at most
        one fallback.
        """
        if fn is None:
            return lambda f: self.fallback(f, eager=eager)  # used as `@plugin.fallback()`
        if not callable(fn):
            raise TypeError(f"`plugin.fallback` takes a function, not {type(fn).__name__}")
        if self._fallback is not None:
            raise ValueError("A fallback is registered twice; hint: dispatch every unregistered "
                             "action from one function")
        self._fallback = _Action(
            name="*",
            description="",
            fn=fn,
            is_async=inspect.iscoroutinefunction(fn),
            validate=None,
            eager=self._eager if eager is None else bool(eager),
        )
        if eager is None and _needs_task(fn):
            self._fallback.eager = self._eager and _NATIVE_EAGER
        return fn

    def on_event(self, *topics: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Registers a handler ``(topic, payload)`` for events on the given topics.

        A topic is exact (``image.imported``) or a prefix ending in ``.*`` (``image.*``);
        ``*`` matches every topic. Exceptions are logged, never fatal.
        """
        if not topics:
            raise ValueError("`on_event` needs at least one topic")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            for t in topics:
                if t == "*":
                    prefix: Optional[str] = ""
                elif t.endswith(".*"):
                    prefix = t[:-1]
                elif "*" in t:
                    raise ValueError(
                        f"Invalid topic pattern `{t}`; hint: use an exact topic or a prefix "
                        "ending in `.*`"
                    )
                else:
                    prefix = None
                self._subscriptions.append(
                    _Subscription(t, prefix, fn, inspect.iscoroutinefunction(fn))
                )
            return fn

        return register

    def on_params_changed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Registers a handler ``(params)`` (``def`` or ``async def``) called with the new params
        after `plugin.params` was replaced by a `params.changed` from the host."""
        self._params_handler = (fn, inspect.iscoroutinefunction(fn))
        return fn

    def on_start(self, fn: Any = None) -> Any:
        """Registers a hook (``def`` or ``async def``, taking no argument or one: the plugin) run
        once the host answered the handshake, before it sends any call, event or task.

        Hooks run one after another in registration order (sync ones in the thread pool), with
        `plugin.params`, `plugin.data_dir` and the host's services (`plugin.kv`, `plugin.call`,
        ...) available. The plugin is ready once they all returned; an exception fails the
        plugin's start with its type and message (the traceback goes to the plugin's log), and
        the hooks after it do not run. They must finish within the host's start timeout
        (10 s by default): start long work as a background task instead.
        """
        if fn is None:
            return self.on_start  # used as `@plugin.on_start()`
        self._start_hooks.append(_make_hook("on_start", fn))
        return fn

    def on_stop(self, fn: Any = None) -> Any:
        """Registers a hook (``def`` or ``async def``, taking no argument or one: the plugin) run
        when the host stops the plugin (`shutdown`), after the calls, events and tasks in flight
        finished and before the process exits.

        Hooks run one after another in registration order; an exception is logged and the next
        hook still runs. The host's services can still be used. They run only after a
        successful start, and not when the host vanished (EOF). The host kills the process at
        the end of its stop grace period, so keep them short.
        """
        if fn is None:
            return self.on_stop  # used as `@plugin.on_stop()`
        self._stop_hooks.append(_make_hook("on_stop", fn))
        return fn

    def task(self, name: Any = None, *, input: Any = None) -> Any:
        """Registers a background task handler (`async def` or plain `def`) for ``name``
        (default: the function name), run when the host sends `task.run` (see `submit`).

        The handler is called ``(payload, ctx)`` with a `TaskContext` (``ctx.progress(...)``,
        ``ctx.cancelled``, ``ctx.id``, ``ctx.attempt``, ``ctx.key``), or ``(payload)`` when it
        takes one parameter. ``input`` validates the payload as in `action`. Its return value
        (any JSON) is the task's result; raising `Retry` (or an exception with
        ``retryable = True``) asks the host to run it again later.
        """
        if callable(name) and input is None:
            return self.task()(name)  # used as `@plugin.task` without parentheses

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._tasks.add(name or fn.__name__, fn, input)
            return fn

        return register

    def after_last(self, key: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Registers the hook the host runs once after the last queued or running task with
        ``key`` finished: ``(key, ctx)`` or ``(key)``, `async def` or `def`, like a task."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._tasks.add_after_last(key, fn)
            return fn

        return register

    @property
    def actions(self) -> List[Dict[str, str]]:
        """The registered actions as announced in `hello`."""
        return [{"name": a.name, "description": a.description} for a in self._actions.values()]

    # ------------------------------------------------------------------ services for handlers

    def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None:
        """Reports progress of the current call (from its handler, in any thread)."""
        params: Dict[str, Any] = {}
        call = _current_call_id()
        if call is not None:
            params["call"] = call
        if fraction is not None:
            params["fraction"] = float(fraction)
        if message is not None:
            params["message"] = str(message)
        self._notify("progress", params)

    def emit(self, topic: str, payload: Any = None) -> Any:
        """Publishes an event through the host, which answers whether it accepted it.

        In async code, ``await plugin.emit(topic, payload)`` raises `HostError` when the host
        refuses (service not granted, rate limit, hop limit); not awaited, a refusal is logged.
        From a sync handler (a worker thread) it waits for the answer and raises the same way.
        """
        params = {"topic": topic, "payload": payload}
        loop = self._loop
        if loop is None or self._closed:
            raise ConnectionError("Not connected to the plugd host")
        if threading.get_ident() != self._loop_thread:
            return asyncio.run_coroutine_threadsafe(
                self._emit_awaited(params), loop).result(_EMIT_SYNC_TIMEOUT)
        emitted = _Emitted(self._send_request("emit", params))

        def logged(fut: "asyncio.Future[Any]") -> None:
            if fut.cancelled():
                return
            exc = fut.exception()  # retrieved here, so asyncio never warns about it
            if exc is not None and not emitted.awaited:
                self.log.warning("The host refused `emit` of `%s`: %s", topic, exc)

        emitted.future.add_done_callback(logged)
        return emitted

    async def _emit_awaited(self, params: Dict[str, Any]) -> None:
        await self._send_request("emit", params)

    async def request(self, method: str, params: Any = None) -> Any:
        """Sends a request to the host (`kv.get`, `plugin.call`, ...) and returns its result.

        Raises `HostError` when the host answers with an error, `ConnectionError` when the
        connection closes first.
        """
        loop = self._loop
        if loop is None or self._closed:
            raise ConnectionError("Not connected to the plugd host")
        fut = self._send_request(method, {} if params is None else params)
        return await fut

    def request_sync(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """`request` for sync handlers running in the thread pool (not on the loop thread)."""
        loop = self._loop
        if loop is None:
            raise ConnectionError("Not connected to the plugd host")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("`request_sync` would block the event loop; use `await plugin.request`")
        return asyncio.run_coroutine_threadsafe(self.request(method, params), loop).result(timeout)

    def _blocking(self, make: Callable[[], Any], timeout: float = _SYNC_TIMEOUT) -> Any:
        """Runs the coroutine ``make()`` on the loop and waits for it, from another thread."""
        loop = self._loop
        if loop is None or self._closed:
            raise ConnectionError("Not connected to the plugd host")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("This would block the event loop; hint: in async code use "
                               "`await plugin.kv...`, `await plugin.call(...)` or "
                               "`await plugin.service(...)`")
        fut = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise HostError("timeout", f"The host did not answer within {timeout:g} s") from None

    # ------------------------------------------------------------------ calls to other plugins

    def _call_params(self, plugin: str, action: str, payload: Any) -> Dict[str, Any]:
        """`plugin.call` params; inside a handler with the `context` of the call it serves."""
        params: Dict[str, Any] = {"plugin": plugin, "action": action, "payload": payload}
        current = _current_context()
        if current is not None:
            chain, deadline = current
            context: Dict[str, Any] = {"chain": list(chain)}
            if deadline is not None:
                context["deadline_ms"] = max(0, int((deadline - time.monotonic()) * 1000))
            params["context"] = context
        return params

    async def call(self, plugin: str, action: str, payload: Any = None, *,
                   full: bool = False) -> Any:
        """Calls ``action`` of another plugin (a declared dependency) and returns its ``value``.

        With ``full=True`` it returns the callee's whole result object (``value`` plus its
        ``notifications``, ``groups`` and any other fields). Inside a handler the call carries
        that call's chain and what is left of its deadline, so the host can refuse a cycle and
        the callee never outlives its caller. Raises `HostError` on refusal or failure, with
        the code (``not_granted``, ``cycle``, ``plugin_timeout``, the callee's own code...).
        """
        result = await self.request("plugin.call", self._call_params(plugin, action, payload))
        return result if full else _value_of(result)

    def call_sync(self, plugin: str, action: str, payload: Any = None, *,
                  full: bool = False) -> Any:
        """`call` for sync handlers (blocks the worker thread until the answer)."""
        params = self._call_params(plugin, action, payload)  # in the handler's context
        current = _current_context()
        timeout = _CALL_SYNC_TIMEOUT
        if current is not None and current[1] is not None:
            timeout = max(0.0, current[1] - time.monotonic()) + _CALL_SYNC_MARGIN
        result = self._blocking(lambda: self.request("plugin.call", params), timeout)
        return result if full else _value_of(result)

    # ------------------------------------------------------------------ params, app services, env

    async def fetch_params(self) -> Dict[str, Any]:
        """Asks the host for the params in force (``params.get``), stores them in
        `plugin.params` and returns them. `plugin.params` is kept current without it (from
        ``initialize`` and each ``params.changed``)."""
        answer = await self.request("params.get", {})
        params = answer.get("params") if isinstance(answer, dict) else None
        self.params = params if isinstance(params, dict) else {}
        return self.params

    async def service(self, name: str, method: str, params: Any = None) -> Any:
        """Calls ``method`` of the application service ``name`` (``app:NAME`` in the
        manifest's `permissions.services`; either spelling works here); returns its result."""
        return await self.request("service.call", _service_params(name, method, params))

    def service_sync(self, name: str, method: str, params: Any = None) -> Any:
        """`service` for sync handlers."""
        req = _service_params(name, method, params)
        return self._blocking(lambda: self.request("service.call", req))

    def env(self, name: str, default: Any = None, type: Callable[[str], Any] = str) -> Any:
        """A host environment variable from the manifest's `permissions.env`, converted with
        ``type`` (``bool`` understands 1/true/yes/on and 0/false/no/off); ``default`` when unset.

        From a sync handler (or any thread but the loop's) the host is asked once per name
        (``env.get``) and the answer is cached for the life of the process. Where blocking is
        impossible — at import time, before `run()` connects, and in ``async`` code on the event
        loop — an answer cached earlier is used, else the process environment, in which the host
        put exactly those variables at start. ``await plugin.env_async(...)`` always asks the
        host. A refusal raises `HostError` (``not_granted``).
        """
        if name in self._env_cache:
            raw = self._env_cache[name]
        elif (self._connected and not self._closed
              and threading.get_ident() != self._loop_thread):
            raw = self._blocking(lambda: self._env_get(name))
        else:
            raw = os.environ.get(name)
        return convert_env(name, raw, default, type)

    async def env_async(self, name: str, default: Any = None,
                        type: Callable[[str], Any] = str) -> Any:
        """`env` from ``async`` code: asks the host once per name (cached)."""
        if name in self._env_cache:
            raw = self._env_cache[name]
        else:
            raw = await self._env_get(name)
        return convert_env(name, raw, default, type)

    async def _env_get(self, name: str) -> Optional[str]:
        answer = await self.request("env.get", {"name": name})
        value = answer.get("value") if isinstance(answer, dict) else None
        raw = value if isinstance(value, str) or value is None else str(value)
        self._env_cache[name] = raw
        return raw

    # ------------------------------------------------------------------ background tasks

    async def submit(self, task: str, payload: Any = None, *, key: Optional[str] = None,
                     priority: bool = False, dedupe: bool = False,
                     max_attempts: Optional[int] = None) -> "TaskId":
        """Queues the task ``task`` of this plugin (`task.submit`, service ``tasks``) and
        returns its id once the host stored it: a `TaskId` (an ``int`` with ``.deduped``).

        ``key`` groups tasks (for `after_last`), ``priority`` runs it before normal tasks,
        ``dedupe`` returns the id of a task with the same key that is still queued instead of
        queuing another, ``max_attempts`` bounds the retries (host default 3). Raises
        `HostError` (``not_granted``, ``overloaded`` when the queue is full, ...).
        """
        params = _submit_params(task, payload, key, priority, dedupe, max_attempts)
        return _task_id(await self.request("task.submit", params))

    def submit_sync(self, task: str, payload: Any = None, *, key: Optional[str] = None,
                    priority: bool = False, dedupe: bool = False,
                    max_attempts: Optional[int] = None) -> "TaskId":
        """`submit` for sync handlers (blocks the worker thread until the host answers)."""
        params = _submit_params(task, payload, key, priority, dedupe, max_attempts)
        return _task_id(self._blocking(lambda: self.request("task.submit", params)))

    # ------------------------------------------------------------------ HTTP

    def serve_asgi(self, app: Any, *, shutdown_timeout: Optional[float] = 2.0,
                   **options: Any) -> None:
        """Serves the ASGI ``app`` (FastAPI, Starlette, any ASGI 3 callable) beside the actions.

        Call it before `plugin.run()`. The plugin needs an `[http]` table in plugin.toml: plugd
        then hands it a listening socket (fd `PLUGD_HTTP_FD`) and proxies
        `/plugins/NAME/...` and the mount path to it, prefix stripped; the SDK sets the ASGI
        `root_path` from the `X-Forwarded-Prefix` the host adds. The app runs in uvicorn,
        imported from the plugin's environment (add `uvicorn` to its requirements), in the same
        event loop as the actions. It starts after the `on_start` hooks; the plugin is ready
        once it accepts connections, and a failing startup (its lifespan startup raised, ...)
        fails the plugin's start with the reason. On `shutdown` it stops accepting connections,
        lets the requests in flight finish (at most ``shutdown_timeout`` seconds, then they are
        cancelled; `None`: no limit but the host's stop grace), runs the app's lifespan
        shutdown, and then the `on_stop` hooks run.

        ``options`` go to `uvicorn.Config` (e.g. `ws_max_size`, `timeout_keep_alive`,
        `log_level`, `access_log=True`), except where it listens. A missing uvicorn or
        `PLUGD_HTTP_FD` is reported when the plugin starts, as a failed start naming the fix.
        """
        if not callable(app):
            raise TypeError(f"serve_asgi takes an ASGI app, not {type(app).__name__}")
        if self._asgi is not None:
            raise RuntimeError("serve_asgi was already called: a plugin serves one app")
        if self._loop is not None:
            raise RuntimeError("serve_asgi must be called before `plugin.run()`")
        from ._asgi import AsgiServer, check_options

        check_options(options)
        self._asgi = AsgiServer(app, shutdown_timeout, options)

    async def _start_http(self) -> Optional[str]:
        asgi = self._asgi
        assert asgi is not None

        def track(task: "asyncio.Task[None]") -> None:
            self._background.add(task)
            task.add_done_callback(self._http_done)

        return await asgi.start(track)

    def _http_done(self, task: "asyncio.Task[None]") -> None:
        self._background.discard(task)
        reason = "it returned"
        if task.cancelled():
            reason = "it was cancelled"
        else:
            exc = task.exception()
            if exc is not None:
                reason = f"{type(exc).__name__}: {exc}"
        asgi = self._asgi
        if asgi is not None and asgi.ready and not self._shutting_down and not self._closed:
            # Serving stopped by itself: end the process, so the host restarts the plugin.
            self.log.error("The HTTP server stopped (%s); the plugin exits", reason)
            self._finish_code = EXIT_HTTP_STOPPED
            self._shutting_down = True
        if self._shutting_down:
            self._maybe_finish()

    # ------------------------------------------------------------------ entry point

    def run(self) -> None:
        """Connects to fd `PLUGD_FD`, says hello, runs the `on_start` hooks, serves until
        `shutdown` (then runs the `on_stop` hooks) or EOF, then exits.

        Exit codes: 0 after `shutdown` or EOF, 2 when not started by plugd, 3 when the host
        refused the handshake.
        """
        try:
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except Exception:  # pragma: no cover - replaced stdout
            pass
        code = self._run()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # pragma: no cover
                pass
        threads = getattr(self._executor, "_threads", ()) if self._executor is not None else ()
        if self._threads_busy or any(t.is_alive() for t in threads):
            # A sync handler is still running and the host is gone: do not wait for it.
            os._exit(code)
        sys.exit(code)

    def _run(self) -> int:
        fd_text = os.environ.get("PLUGD_FD")
        if fd_text is None:
            _stderr("`PLUGD_FD` is not set: this program is a plugd plugin; hint: run it "
                    "through `plugd` (for example `plugd call`), not directly")
            return EXIT_USAGE
        try:
            sock = socket.socket(fileno=int(fd_text))
            # A program the plugin starts must not hold the host's channel (nor, in
            # `serve_asgi`, fds 4 and 5): it could talk to the host as the plugin, and a
            # channel it keeps open would hide the plugin's death from the host.
            sock.set_inheritable(False)
        except (ValueError, OSError) as exc:
            _stderr(f"`PLUGD_FD={fd_text}` is not a usable socket: {exc}")
            return EXIT_USAGE
        root = logging.getLogger()
        root.addHandler(self._log_handler)
        if root.level == logging.WARNING and len(root.handlers) == 1:
            root.setLevel(logging.INFO)  # untouched default: let `logging.info` through
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(self._serve(sock))
        finally:
            root.removeHandler(self._log_handler)
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                if self._executor is not None:
                    self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, sock: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._exit = loop.create_future()
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        loop.add_reader(self._fd, self._on_readable)
        hello_params: Dict[str, Any] = {
            "protocol": PROTOCOL_VERSION,
            "sdk": f"python/{__version__}",
            "actions": self.actions,
        }
        if self._start_hooks or self._asgi is not None:
            # The host then waits for `started` before it sends any work.
            hello_params["on_start"] = True
        if self._asgi is not None and self._asgi.handoff:
            # WebSockets come as handed-over client connections (see `_asgi.Handoff`).
            hello_params["http_handoff"] = True
        hello = self._send_request("hello", hello_params)
        self._hello_id = self._next_id
        try:
            init = await hello
        except HostError as exc:
            _stderr(f"The host refused the handshake: {exc.message} (code {exc.rpc_code})")
            self._close()
            return EXIT_REFUSED
        except ConnectionError:
            _stderr("The host closed the connection during the handshake")
            self._close()
            return EXIT_OK
        # `_on_response` already applied `init` (see there), before any later frame.
        del init
        if self._start_hooks or self._asgi is not None:
            self._started_ok = await self._lifecycle(self._run_start_hooks())
        code = await self._exit
        if self._shutting_down and self._started_ok and self._stop_hooks and not self._closed:
            await self._lifecycle(self._run_stop_hooks())
            await self._flush()
        self._close()
        # Let handlers cancelled by `_close` (EOF) unwind, so none is destroyed while pending.
        tasks = [t for t in list(self._inflight.values()) + list(self._background)
                 if isinstance(t, asyncio.Future) and not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        return code

    # ------------------------------------------------------------------ on_start / on_stop

    async def _lifecycle(self, coro: Any) -> bool:
        """Runs the hooks of `coro` in a Task counted with the background work, so the socket
        closing (EOF) cancels it and a `shutdown` waits for it. False when it was cancelled."""
        task = self._loop.create_task(coro)  # type: ignore[union-attr]
        self._background.add(task)
        try:
            return bool(await task)
        except asyncio.CancelledError:
            return False
        finally:
            self._background.discard(task)
            if self._shutting_down:
                self._maybe_finish()

    async def _run_hook(self, hook: _Hook) -> None:
        args = (self,) if hook.with_plugin else ()
        if hook.is_async:
            await hook.fn(*args)
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._max_workers or DEFAULT_WORKERS, thread_name_prefix="plugd-action")
        result = await self._loop.run_in_executor(  # type: ignore[union-attr]
            self._executor, hook.fn, *args)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            await result

    async def _run_start_hooks(self) -> bool:
        """Runs the `on_start` hooks in order, stopping at the first that raises, then tells the
        host `started` (with the error, if any). True when they all succeeded."""
        error: Optional[str] = None
        for hook in self._start_hooks:
            try:
                await self._run_hook(hook)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and self._closed:
                    raise  # the host went away: nobody to tell
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.log.error("`on_start` hook `%s` failed: %s", hook.name, error,
                               exc_info=(type(exc), exc, exc.__traceback__))
                break
        if error is None and self._asgi is not None and not self._shutting_down:
            # The app starts after the hooks (it may use what they set up); the plugin is
            # ready once it accepts connections.
            error = await self._start_http()
            if error is not None:
                self.log.error("serve_asgi: %s", error)
        self._notify("started", {} if error is None else {"error": error})
        return error is None

    async def _run_stop_hooks(self) -> bool:
        """Runs every `on_stop` hook in order; one that raises is logged and the next runs."""
        for hook in self._stop_hooks:
            try:
                await self._run_hook(hook)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and self._closed:
                    raise
                self.log.error("`on_stop` hook `%s` failed: %s: %s", hook.name,
                               type(exc).__name__, exc,
                               exc_info=(type(exc), exc, exc.__traceback__))
        return True

    async def _flush(self, timeout: float = 1.0) -> None:
        """Waits (at most ``timeout``) until what was queued for the socket is written."""
        await asyncio.sleep(0)  # records logged by a worker thread are queued on the loop
        end = time.monotonic() + timeout
        while self._wbuf and not self._closed and time.monotonic() < end:
            await asyncio.sleep(0.01)

    def _on_initialized(self, init: Any) -> None:
        self._apply_initialize(init if isinstance(init, dict) else {})
        self._connected = True
        backlog, self._log_backlog = self._log_backlog, []
        for params in backlog:
            self._notify("log", params)

    def _apply_initialize(self, init: Dict[str, Any]) -> None:
        self.name = str(init.get("plugin") or self.name)
        self.version = str(init.get("version") or "")
        params = init.get("params")
        self.params = params if isinstance(params, dict) else {}
        data_dir = init.get("data_dir")
        if data_dir:
            self.data_dir = pathlib.Path(data_dir)
        services = init.get("services")
        self.services = list(services) if isinstance(services, list) else []
        limits = init.get("limits")
        self.limits = dict(limits) if isinstance(limits, dict) else {}
        if self._asgi is not None:
            # Every request the host sends to the HTTP socket carries it (see `_asgi`).
            self._asgi.set_secret(init.get("http_secret"))
        workers = self._max_workers
        if workers is None:
            concurrency = self.limits.get("concurrency")
            if isinstance(concurrency, int) and not isinstance(concurrency, bool):
                workers = concurrency
        self._max_workers = max(1, min(int(workers or DEFAULT_WORKERS), 1024))

    def _close(self) -> None:
        if self._sock is None:
            return
        loop = self._loop
        if loop is not None and self._fd >= 0:
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
        self._closed = True
        try:
            self._sock.close()
        except OSError:  # pragma: no cover
            pass
        self._sock = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("The plugd host closed the connection"))
        self._pending.clear()
        for task in list(self._inflight.values()) + list(self._background):
            if isinstance(task, asyncio.Task):
                task.cancel()
            elif isinstance(task, _Waiting):
                self._cancel_waiting(task)

    def _finish(self, code: int) -> None:
        """Ends `run` once everything queued has been written."""
        self._exit_code = code
        if self._exit is not None and not self._exit.done() and not self._wbuf:
            self._exit.set_result(code)

    # ------------------------------------------------------------------ reading

    def _on_readable(self) -> None:
        # `recv_into` a buffer allocated once: `recv(256 KiB)` would allocate (mmap) and free a
        # 256 KiB object per read, which costs more than the rest of a small call together.
        try:
            n = self._sock.recv_into(self._rbuf)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self._on_eof()
            return
        data = self._rview[:n].tobytes()
        if data[-1] != 10:  # b"\n": keep the incomplete tail for later
            if b"\n" not in data:
                self._rparts.append(data)
                return
            head, _, tail = data.rpartition(b"\n")
            data = head
            rest: List[bytes] = [tail]
        else:
            data = data[:-1]
            rest = []
        if self._rparts:
            self._rparts.append(data)
            data = b"".join(self._rparts)
        self._rparts = rest
        # Replies produced while dispatching this batch are written with one `send`.
        self._batch = batch = []
        try:
            dispatch = self._dispatch
            for line in data.split(b"\n"):
                if line:
                    try:
                        dispatch(line)
                    except Exception as exc:  # a malformed frame must not lose the others
                        _stderr(f"Could not handle a frame ({type(exc).__name__}: {exc}): "
                                f"{line[:200]!r}")
        finally:
            self._batch = None
            if batch:
                self._write("".join(batch).encode())

    def _on_eof(self) -> None:
        if self._rparts:
            _stderr("The host closed the connection in the middle of a frame")
            self._rparts = []
        self._close()
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(EXIT_OK)

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = _decode(line)
            method = msg.get("method")
        except (ValueError, AttributeError):
            _stderr(f"Ignored a frame that is not a JSON object: {line[:200]!r}")
            return
        if method is None:
            self._on_response(msg)
            return
        id_ = msg.get("id")
        params = msg.get("params")
        if method == "call":
            if id_ is None:
                return
            self._on_call(id_, params)
        elif method == "ping":
            if id_ is not None:
                self._send('{"jsonrpc":"2.0","id":%d,"result":"pong"}\n' % id_)
        elif method == "event":
            if id_ is None:
                self._on_event(params)  # the older notification form: nobody to answer
            else:
                self._on_event_request(id_, params)
        elif method == "params.changed":
            self._on_params_changed(params)
        elif method == "shutdown":
            self._on_shutdown()
        elif method == "cancel":
            if not self._tasks.on_cancel(params):
                self._on_cancel(params)
        elif method == "task.run":
            self._tasks.on_run(id_, params)
        elif id_ is not None:
            self._send_error(id_, METHOD_NOT_FOUND, f"Method `{method}` not found",
                             {"method": method})

    def _on_response(self, msg: Dict[str, Any]) -> None:
        fut = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]
        if fut is None or fut.done():
            return
        err = msg.get("error")
        if err is None and not self._connected and msg.get("id") == self._hello_id:
            # The answer to `hello`: apply it now, before the next frame of this same read
            # (often a `call`) is dispatched, not when `_serve` next runs.
            self._on_initialized(msg.get("result"))
        if err is not None:
            fut.set_exception(HostError.from_rpc(err))
        else:
            fut.set_result(msg.get("result"))
        if self._waiting:
            waiting = self._waiting.pop(msg.get("id"), None)  # type: ignore[arg-type]
            if waiting is not None:
                self._step(waiting)

    # ------------------------------------------------------------------ calls

    def _on_call(self, id_: int, params: Any) -> None:
        if not isinstance(params, dict) or not isinstance(params.get("action"), str):
            self._send_error(id_, INVALID_PARAMS, "`call` needs params `{action, payload}`")
            return
        name = params["action"]
        action = self._actions.get(name)
        if action is None:
            if self._fallback is None:
                self._send_error(id_, UNKNOWN_ACTION, f"Unknown action `{name}`",
                                 {"action": name})
                return
            # The fallback is called `(action, payload)`: bind the name, the rest is an action's.
            action = dataclasses.replace(self._fallback, name=name,
                                         fn=functools.partial(self._fallback.fn, name))
        if self._shutting_down:
            self._send_error(id_, ACTION_FAILED, "The plugin is shutting down",
                             {"type": "ShuttingDown"})
            return
        arg = params.get("payload")
        if action.validate is not None:
            try:
                arg = action.validate(arg)
            except ValidationFailed as exc:
                self._send_error(id_, BAD_PAYLOAD,
                                 f"Payload rejected by the input model of `{name}`: {exc}",
                                 {"errors": exc.errors})
                return
        deadline_ms = params.get("deadline_ms")
        if isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool):
            deadline: Optional[float] = time.monotonic() + deadline_ms / 1000.0
        else:
            deadline = deadline_ms = None
        # The chain is checked (and copied) only when the handler makes a `plugin.call`.
        ctx = contextvars.copy_context()
        ctx.run(_current.set, (id_, params.get("chain"), deadline))
        if action.is_async:
            self._start_async(id_, action.fn, arg, ctx, deadline_ms, action.eager)
        else:
            self._start_sync(id_, action.fn, arg, ctx)

    def _start_async(self, id_: int, fn: Callable[..., Any], arg: Any,
                     ctx: contextvars.Context, deadline_ms: Any, eager: bool) -> None:
        loop = self._loop
        if _NATIVE_EAGER and eager:
            try:
                task = asyncio.Task(ctx.run(fn, arg), loop=loop, context=ctx,  # type: ignore[call-arg]
                                    eager_start=True)
            except Exception as exc:  # calling the function itself raised
                self._reply_exception(id_, exc)
                return
            if task.done():
                self._on_task_done(id_, task)
                return
        elif not eager:
            try:
                task = ctx.run(loop.create_task, fn(arg))  # type: ignore[union-attr]
            except Exception as exc:
                self._reply_exception(id_, exc)
                return
        else:
            try:
                coro = ctx.run(fn, arg)
                yielded = ctx.run(coro.send, None)
            except StopIteration as stop:
                self._reply_value(id_, stop.value)
                return
            except (Exception, asyncio.CancelledError) as exc:
                message = None
                if isinstance(exc, RuntimeError) and "task" in str(exc):
                    message = (f"{exc}; hint: on Python < 3.12 an async action starts outside a "
                               "Task until it first suspends: register it with "
                               "`@plugin.action(eager=False)`")
                self._reply_exception(id_, exc, message)
                return
            waiting = _Waiting(id_, coro, ctx)
            if isinstance(deadline_ms, (int, float)) and deadline_ms > 0:
                waiting.timer = loop.call_later(  # type: ignore[union-attr]
                    deadline_ms / 1000.0, self._expire, id_)
            self._inflight[id_] = waiting
            self._suspended(waiting, yielded)
            return
        self._inflight[id_] = task
        timer = None
        if isinstance(deadline_ms, (int, float)) and deadline_ms > 0:
            timer = loop.call_later(deadline_ms / 1000.0, self._expire, id_)  # type: ignore[union-attr]
        task.add_done_callback(lambda t: self._on_task_done(id_, t, timer))

    def _on_task_done(self, id_: int, task: "asyncio.Task[Any]", timer: Any = None) -> None:
        if timer is not None:
            timer.cancel()
        self._inflight.pop(id_, None)
        if id_ in self._expired:
            # The host gave up on this call at its deadline: a reply would only be dropped.
            self._expired.discard(id_)
        elif task.cancelled():
            self._send_error(id_, ACTION_FAILED, "The call was cancelled",
                             {"type": "CancelledError"})
        else:
            exc = task.exception()
            if exc is None:
                self._reply_value(id_, task.result())
            else:
                self._reply_exception(id_, exc)
        if self._shutting_down:
            self._maybe_finish()

    def _suspended(self, waiting: _Waiting, yielded: Any) -> None:
        """A handler stepped by the SDK yielded `yielded`: it waits for the answer to the request
        it just sent, or goes on as a Task (anything else it awaits, or it was cancelled)."""
        if (yielded is self._last_request and yielded is not None and not waiting.cancel
                and not self._closed):
            waiting.fut = yielded
            waiting.request = self._last_request_id
            self._waiting[waiting.request] = waiting
            return
        task = self._to_task(waiting, yielded)
        if waiting.cancel:
            task.cancel()

    def _to_task(self, waiting: _Waiting, yielded: Any) -> "asyncio.Task[Any]":
        """Hands a suspended handler to a Task (in a copy of its context, like `_start_async`),
        which continues from the await that yielded `yielded`."""
        call, timer = waiting.call, waiting.timer
        task = waiting.ctx.run(self._loop.create_task,  # type: ignore[union-attr]
                               _Resumed(waiting.coro, yielded))
        self._inflight[call] = task
        task.add_done_callback(lambda t: self._on_task_done(call, t, timer))
        return task

    def _step(self, waiting: _Waiting) -> None:
        """Resumes a handler whose request was just answered, inside the read callback."""
        waiting.running = True
        try:
            yielded = waiting.ctx.run(waiting.coro.send, None)
        except StopIteration as stop:
            waiting.running = False
            self._waiting_done(waiting, stop.value, None)
            return
        except (Exception, asyncio.CancelledError) as exc:
            waiting.running = False
            self._waiting_done(waiting, None, exc)
            return
        waiting.running = False
        self._suspended(waiting, yielded)

    def _waiting_done(self, waiting: _Waiting, value: Any, exc: Optional[BaseException]) -> None:
        """`_on_task_done` for a handler that finished while stepped by the SDK."""
        id_ = waiting.call
        if waiting.timer is not None:
            waiting.timer.cancel()
        self._inflight.pop(id_, None)
        if id_ in self._expired:
            self._expired.discard(id_)
        elif exc is None:
            self._reply_value(id_, value)
        elif isinstance(exc, asyncio.CancelledError):
            self._send_error(id_, ACTION_FAILED, "The call was cancelled",
                             {"type": "CancelledError"})
        else:
            self._reply_exception(id_, exc)
        if self._shutting_down:
            self._maybe_finish()

    def _cancel_waiting(self, waiting: _Waiting) -> None:
        """Cancels a handler stepped by the SDK as `Task.cancel` would: it becomes a Task that
        starts by raising `CancelledError` at its await (after the current step, if running)."""
        if waiting.running:
            waiting.cancel = True
            return
        if self._waiting.get(waiting.request) is waiting:
            del self._waiting[waiting.request]
        self._to_task(waiting, waiting.fut).cancel()

    def _expire(self, id_: int) -> None:
        task = self._inflight.get(id_)
        if isinstance(task, _Waiting):
            self._expired.add(id_)
            self._cancel_waiting(task)
        elif isinstance(task, asyncio.Task) and not task.done():
            self._expired.add(id_)
            task.cancel()

    def _on_cancel(self, params: Any) -> None:
        # The host sends `cancel` when it gave up on the call (its caller left or the deadline
        # passed): cancel the handler and send no reply, which would only be dropped.
        id_ = params.get("id") if isinstance(params, dict) else None
        task = self._inflight.get(id_)  # type: ignore[arg-type]
        if isinstance(task, _Waiting):
            self._expired.add(id_)
            self._cancel_waiting(task)
        elif isinstance(task, asyncio.Task) and not task.done():
            self._expired.add(id_)
            task.cancel()

    def _start_sync(self, id_: int, fn: Callable[..., Any], arg: Any,
                    ctx: contextvars.Context) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._max_workers or DEFAULT_WORKERS, thread_name_prefix="plugd-action"
            )
        self._inflight[id_] = None
        self._threads_busy += 1
        self._executor.submit(self._run_sync, id_, fn, arg, ctx)

    def _run_sync(self, id_: int, fn: Callable[..., Any], arg: Any,
                  ctx: contextvars.Context) -> None:
        # Runs in a worker thread; the reply is encoded here and written by the loop thread.
        try:
            frame = self._result_frame(id_, ctx.run(fn, arg))
        except Exception as exc:
            frame = self._exception_frame(id_, exc)
        try:
            self._loop.call_soon_threadsafe(self._sync_done, id_, frame)  # type: ignore[union-attr]
        except RuntimeError:  # pragma: no cover - the loop is closed: nobody to answer
            self._threads_busy -= 1

    def _sync_done(self, id_: int, frame: str) -> None:
        self._threads_busy -= 1
        self._inflight.pop(id_, None)
        self._send(frame)
        if self._shutting_down:
            self._maybe_finish()

    # ------------------------------------------------------------------ replies

    def _result_frame(self, id_: int, value: Any) -> str:
        try:
            if not isinstance(value, ActionResult):
                return '{"jsonrpc":"2.0","id":%d,"result":{"value":%s}}\n' % (id_, _encode(value))
            body = _encode(value.to_json())
        except (TypeError, ValueError) as exc:
            return self._exception_frame(
                id_, exc, f"The action result is not JSON-serialisable: {exc}")
        return '{"jsonrpc":"2.0","id":%d,"result":%s}\n' % (id_, body)

    def _exception_frame(self, id_: int, exc: BaseException, message: Optional[str] = None) -> str:
        if isinstance(exc, ClientError):
            # The plugin's own answer, not a failure: no traceback in the log.
            return self._error_frame(id_, CLIENT_ERROR, exc.message,
                                     {"type": "ClientError", "code": exc.code,
                                      "status": exc.status})
        data: Dict[str, Any] = {"type": type(exc).__name__}
        code = getattr(exc, "code", None)
        if isinstance(code, (str, int)) and not isinstance(code, bool):
            data["code"] = code
        if not isinstance(exc, asyncio.CancelledError):
            self.log.error("Action failed: %s: %s", type(exc).__name__, exc,
                           exc_info=(type(exc), exc, exc.__traceback__),
                           extra={"plugd_call": id_})
        return self._error_frame(id_, ACTION_FAILED, message or str(exc) or type(exc).__name__, data)

    def _error_frame(self, id_: int, code: int, message: str, data: Any = None) -> str:
        err: Dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            err["data"] = data
        try:
            body = _encode(err)
        except (TypeError, ValueError):
            body = _encode({"code": code, "message": message})
        return '{"jsonrpc":"2.0","id":%d,"error":%s}\n' % (id_, body)

    def _reply_value(self, id_: int, value: Any) -> None:
        self._send(self._result_frame(id_, value))

    def _reply_exception(self, id_: int, exc: BaseException, message: Optional[str] = None) -> None:
        self._send(self._exception_frame(id_, exc, message))

    def _send_error(self, id_: int, code: int, message: str, data: Any = None) -> None:
        self._send(self._error_frame(id_, code, message, data))

    # ------------------------------------------------------------------ events, params, shutdown

    def _on_event(self, params: Any) -> None:
        if not isinstance(params, dict):
            return
        topic = params.get("topic")
        if not isinstance(topic, str):
            return
        payload = params.get("payload")
        for sub in self._subscriptions:
            if sub.matches(topic):
                self._background_call(sub.fn, sub.is_async, (topic, payload),
                                      f"Event handler `{getattr(sub.fn, '__name__', sub.fn)}` "
                                      f"failed on `{topic}`")

    def _on_event_request(self, id_: int, params: Any) -> None:
        """`event` as a request: answered `null` once every matching handler returned, or
        `-32003` (the first failure, in registration order) when one raised; the host sends the
        next event of this plugin only after the answer."""
        if not isinstance(params, dict) or not isinstance(params.get("topic"), str):
            self._send_error(id_, INVALID_PARAMS, "`event` needs params `{topic, payload}`")
            return
        if self._shutting_down:
            self._send_error(id_, ACTION_FAILED, "The plugin is shutting down",
                             {"type": "ShuttingDown"})
            return
        topic = params["topic"]
        subs = [sub for sub in self._subscriptions if sub.matches(topic)]
        if not subs:
            self._send('{"jsonrpc":"2.0","id":%d,"result":null}\n' % id_)
            return
        coro = self._deliver_event(id_, topic, params.get("payload"), subs)
        if _NATIVE_EAGER:  # an event whose handlers do not suspend is answered right here
            task = asyncio.Task(coro, loop=self._loop, eager_start=True)  # type: ignore[call-arg]
        else:
            task = self._loop.create_task(coro)  # type: ignore[union-attr]
        if not task.done():
            self._background.add(task)
            task.add_done_callback(self._event_done)

    def _event_done(self, task: "asyncio.Task[Any]") -> None:
        self._background.discard(task)
        if self._shutting_down:
            self._maybe_finish()

    async def _deliver_event(self, id_: int, topic: str, payload: Any,
                             subs: List[_Subscription]) -> None:
        if len(subs) == 1:
            failures = [await self._event_handler(subs[0], topic, payload)]
        else:
            failures = await asyncio.gather(
                *(self._event_handler(sub, topic, payload) for sub in subs))
        first: Optional[BaseException] = None
        for sub, exc in zip(subs, failures):
            if exc is None:
                continue
            first = first or exc
            self.log.error("Event handler `%s` failed on `%s`: %s: %s",
                           getattr(sub.fn, "__name__", sub.fn), topic, type(exc).__name__, exc,
                           exc_info=(type(exc), exc, exc.__traceback__))
        if first is None:
            self._send('{"jsonrpc":"2.0","id":%d,"result":null}\n' % id_)
            return
        data: Dict[str, Any] = {"type": type(first).__name__}
        code = getattr(first, "code", None)
        if isinstance(code, (str, int)) and not isinstance(code, bool):
            data["code"] = code
        self._send_error(id_, ACTION_FAILED, str(first) or type(first).__name__, data)

    async def _event_handler(self, sub: _Subscription, topic: str,
                             payload: Any) -> Optional[Exception]:
        """Runs one handler of an event; returns what it raised, if anything."""
        try:
            if sub.is_async:
                await sub.fn(topic, payload)
            else:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self._max_workers or DEFAULT_WORKERS,
                        thread_name_prefix="plugd-action")
                await self._loop.run_in_executor(  # type: ignore[union-attr]
                    self._executor, sub.fn, topic, payload)
        except Exception as exc:
            return exc
        return None

    def _on_params_changed(self, params: Any) -> None:
        new = params.get("params") if isinstance(params, dict) else None
        self.params = new if isinstance(new, dict) else {}
        if self._params_handler is not None:
            fn, is_async = self._params_handler
            self._background_call(fn, is_async, (self.params,), "The params handler failed")

    def _background_call(self, fn: Callable[..., Any], is_async: bool, args: Tuple[Any, ...],
                         what: str) -> None:
        loop = self._loop
        assert loop is not None

        def report(exc: BaseException) -> None:
            self.log.error("%s: %s: %s", what, type(exc).__name__, exc,
                           exc_info=(type(exc), exc, exc.__traceback__))

        if is_async:
            try:
                task = loop.create_task(fn(*args))
            except Exception as exc:
                report(exc)
                return
        else:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._max_workers or DEFAULT_WORKERS,
                    thread_name_prefix="plugd-action")
            task = loop.run_in_executor(self._executor, fn, *args)
        self._background.add(task)

        def done(t: "asyncio.Future[Any]") -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                report(t.exception())  # type: ignore[arg-type]
            if self._shutting_down:
                self._maybe_finish()

        task.add_done_callback(done)

    def _on_shutdown(self) -> None:
        self._shutting_down = True
        if self._asgi is not None:
            self._asgi.stop()  # its task is in `_background`: the exit waits for it
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._inflight and not self._background:
            self._finish(self._finish_code)

    # ------------------------------------------------------------------ writing

    def _send_request(self, method: str, params: Any) -> "asyncio.Future[Any]":
        self._next_id += 1
        id_ = self._next_id
        fut = self._loop.create_future()  # type: ignore[union-attr]
        self._pending[id_] = fut
        try:
            body = _encode({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        except (TypeError, ValueError):
            del self._pending[id_]
            raise
        self._send(body + "\n")
        self._last_request = fut
        self._last_request_id = id_
        return fut

    def _notify(self, method: str, params: Any) -> None:
        """Sends a notification; callable from any thread."""
        frame = _encode({"jsonrpc": "2.0", "method": method, "params": params}) + "\n"
        if threading.get_ident() == self._loop_thread:
            self._send(frame)
        else:
            loop = self._loop
            if loop is None or self._closed:
                return
            try:
                loop.call_soon_threadsafe(self._send, frame)
            except RuntimeError:  # pragma: no cover - loop closed
                pass

    def _send_log(self, params: Dict[str, Any]) -> None:
        if self._connected and not self._closed:
            self._notify("log", params)
        elif not self._closed and len(self._log_backlog) < 1000:
            self._log_backlog.append(params)
        else:
            _stderr(f"[{params['level']}] {params['message']}")

    def _send(self, frame: str) -> None:
        batch = self._batch
        if batch is not None:
            batch.append(frame)
        else:
            self._write(frame.encode())

    def _write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._wbuf:
            self._wbuf += data
            return
        try:
            n = self._sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._on_eof()
            return
        if n < len(data):
            self._wbuf += data[n:]
            self._loop.add_writer(self._fd, self._on_writable)  # type: ignore[union-attr]

    def _on_writable(self) -> None:
        try:
            n = self._sock.send(self._wbuf)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._wbuf.clear()
            self._on_eof()
            return
        del self._wbuf[:n]
        if not self._wbuf:
            self._loop.remove_writer(self._fd)  # type: ignore[union-attr]
            if self._shutting_down:
                self._maybe_finish()


def _value_of(result: Any) -> Any:
    """The ``value`` of a callee's result object."""
    return result.get("value") if isinstance(result, dict) else result


def _service_params(name: str, method: str, params: Any) -> Dict[str, Any]:
    service = name[4:] if name.startswith("app:") else name
    return {"service": service, "method": method, "params": {} if params is None else params}


_TASK_NAMES = frozenset({"current_task", "timeout", "timeout_at", "TaskGroup"})


def _needs_task(fn: Callable[..., Any]) -> bool:
    """Whether a handler's code names an asyncio API that needs to run inside a Task."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        if _TASK_NAMES.intersection(c.co_names):
            return True
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    return False


# ---------------------------------------------------------------------- host services
# `plugin.kv` (async), `plugin.kv_sync` (blocking twins for sync handlers) and the conversion
# behind `plugin.env`. Each method is one request of `docs/protocol.md` ("Host services"); a
# refusal or failure raises `HostError` with the host's machine-readable `code`. (They live in
# this module because `plugd serve` ships a fixed list of SDK files.)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class Kv:
    """The plugin's key-value store in the host (service ``kv``), for ``async`` code.

    Keys are strings, values any JSON value. Every write is a commit with an id; ``undo`` and
    ``redo`` revert and re-apply whole commits.
    """

    def __init__(self, plugin: Plugin) -> None:
        self._plugin = plugin

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when there is none."""
        answer = await self._plugin.request("kv.get", {"key": key})
        return answer.get("value") if answer.get("found") else default

    async def set(self, key: str, value: Any) -> int:
        """Stores ``value`` under ``key``; returns the commit id."""
        return (await self._plugin.request("kv.set", {"key": key, "value": value}))["commit"]

    async def delete(self, key: str) -> int:
        """Removes ``key``; returns the commit id."""
        return (await self._plugin.request("kv.delete", {"key": key}))["commit"]

    async def list(self, prefix: str = "") -> List[Tuple[str, Any]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, sorted by key (all pages)."""
        items: List[Tuple[str, Any]] = []
        after: Optional[str] = None
        while True:
            params: Dict[str, Any] = {"prefix": prefix}
            if after is not None:
                params["after"] = after
            page = await self._plugin.request("kv.list", params)
            items.extend((item["key"], item.get("value")) for item in page.get("items") or ())
            following = page.get("next")
            # A page that does not advance would loop for ever: the listing ends there.
            if following is None or following == after:
                return items
            after = following

    async def commit(self, puts: Optional[Mapping[str, Any]] = None,
                     deletes: Optional[Iterable[str]] = None,
                     expect: Optional[Mapping[str, Any]] = None) -> int:
        """Applies ``puts`` and ``deletes`` at once, all or nothing; returns the commit id.

        ``expect`` maps keys to the values they must hold now (``None``: must be absent);
        otherwise nothing is written and `HostError` with code ``conflict`` is raised.
        """
        params: Dict[str, Any] = {}
        if puts:
            params["puts"] = dict(puts)
        if deletes:
            params["deletes"] = list(deletes)
        if expect:
            params["expect"] = dict(expect)
        return (await self._plugin.request("kv.commit", params))["commit"]

    async def undo(self) -> Optional[int]:
        """Reverts the latest commit; returns its id, or ``None`` when there is nothing to undo."""
        return (await self._plugin.request("kv.undo", {})).get("commit")

    async def redo(self) -> Optional[int]:
        """Re-applies the latest undone commit; returns its id, or ``None`` when there is none."""
        return (await self._plugin.request("kv.redo", {})).get("commit")


class KvSync:
    """`Kv` for sync handlers (they run in a thread pool): the same methods, blocking.

    Calling one on the event loop's thread (from ``async`` code) raises `RuntimeError`, since it
    would block the loop that reads the answer.
    """

    def __init__(self, plugin: Plugin, kv: Kv) -> None:
        self._plugin = plugin
        self._kv = kv

    def _run(self, make: Callable[[], Any]) -> Any:
        return self._plugin._blocking(make)

    def get(self, key: str, default: Any = None) -> Any:
        return self._run(lambda: self._kv.get(key, default))

    def set(self, key: str, value: Any) -> int:
        return self._run(lambda: self._kv.set(key, value))

    def delete(self, key: str) -> int:
        return self._run(lambda: self._kv.delete(key))

    def list(self, prefix: str = "") -> List[Tuple[str, Any]]:
        return self._run(lambda: self._kv.list(prefix))

    def commit(self, puts: Optional[Mapping[str, Any]] = None,
               deletes: Optional[Iterable[str]] = None,
               expect: Optional[Mapping[str, Any]] = None) -> int:
        return self._run(lambda: self._kv.commit(puts, deletes, expect))

    def undo(self) -> Optional[int]:
        return self._run(self._kv.undo)

    def redo(self) -> Optional[int]:
        return self._run(self._kv.redo)


def convert_env(name: str, raw: Optional[str], default: Any, type_: Callable[[str], Any]) -> Any:
    """``raw`` (a variable's text, or ``None`` when unset) converted with ``type_``."""
    if raw is None:
        return default
    if type_ is bool:
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"Environment variable `{name}` is `{raw}`, not a boolean; hint: use "
                         "1/true/yes/on or 0/false/no/off")
    try:
        return type_(raw)
    except (TypeError, ValueError) as exc:
        what = getattr(type_, "__name__", str(type_))
        raise ValueError(f"Environment variable `{name}` is `{raw}`, not a valid {what}: {exc}") \
            from None


# ---------------------------------------------------------------------- background tasks
# `@plugin.task`, `@plugin.after_last` and `plugin.submit` (docs/protocol.md, "Tasks"). The host
# sends one `task.run` request per run; the handler gets its payload and a `TaskContext`, and the
# answer is its return value, or an error whose `data.code` says `retry` or `cancelled`. (In this
# module for the same reason as `Kv`: `plugd serve` ships a fixed list of SDK files.)

AFTER_LAST = "@after_last"
TASK_RETRY = "retry"
TASK_CANCELLED = "cancelled"
# The host's rule for task names (`@` is reserved for its own runs such as `@after_last`).
_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TaskId(int):
    """What `Plugin.submit` returns: the task's id, an ``int``, which also says whether the
    submit was ``deduped`` (``dedupe=True`` and a task with that key was already queued: the id
    is that task's, and nothing new was queued)."""

    deduped: bool

    def __new__(cls, id_: int, deduped: bool = False) -> "TaskId":
        self = super().__new__(cls, id_)
        self.deduped = bool(deduped)
        return self

    @property
    def id(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"TaskId({int(self)}, deduped={self.deduped})"


class TaskContext:
    """What a task handler gets beside its payload.

    ``id`` is the task's id (the same in every attempt), ``task`` its name (``@after_last`` for
    an after-last hook), ``key`` its grouping key or ``None``, ``attempt`` the run's number (1,
    then one more per retry or per run cut short by a crash), ``deadline`` the
    `time.monotonic()` by which the host wants the answer (``None`` when it gave none).
    """

    __slots__ = ("id", "task", "key", "attempt", "deadline", "_plugin", "_cancel")

    def __init__(self, plugin: "Plugin", id_: int, task: str, key: Optional[str], attempt: int,
                 deadline: Optional[float]) -> None:
        self.id = id_
        self.task = task
        self.key = key
        self.attempt = attempt
        self.deadline = deadline
        self._plugin = plugin
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether the host asked to stop this run (`cancel`): a sync handler checks it between
        steps and returns or raises; an async handler is cancelled (`CancelledError`) anyway."""
        return self._cancel.is_set()

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the run is cancelled or ``timeout`` seconds passed; returns
        `cancelled`. For sync handlers (in async code use `asyncio` waits, which are cancelled)."""
        return self._cancel.wait(timeout)

    def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None:
        """Reports the task's progress (`progress` with ``task``); from any thread."""
        params: Dict[str, Any] = {"task": self.id}
        if fraction is not None:
            params["fraction"] = float(fraction)
        if message is not None:
            params["message"] = str(message)
        self._plugin._notify("progress", params)

    def __repr__(self) -> str:
        return (f"TaskContext(id={self.id}, task={self.task!r}, key={self.key!r}, "
                f"attempt={self.attempt}, cancelled={self.cancelled})")


@dataclasses.dataclass
class _TaskHandler:
    name: str
    fn: Callable[..., Any]
    is_async: bool
    with_ctx: bool  # the handler takes a second positional parameter: the `TaskContext`
    validate: Optional[Callable[[Any], Any]]


def _takes_ctx(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts two positional arguments (payload, ctx) rather than one."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return True
    positional = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def _task_handler(name: str, fn: Callable[..., Any], input: Any) -> _TaskHandler:
    return _TaskHandler(name=name, fn=fn, is_async=inspect.iscoroutinefunction(fn),
                        with_ctx=_takes_ctx(fn),
                        validate=make_validator(input) if input is not None else None)


def _submit_params(task: str, payload: Any, key: Optional[str], priority: bool, dedupe: bool,
                   max_attempts: Optional[int]) -> Dict[str, Any]:
    if not isinstance(task, str):
        raise TypeError(f"The task name must be a string, not {type(task).__name__}")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"`key` must be a string or None, not {type(key).__name__}")
    if max_attempts is not None and (not _is_int(max_attempts) or max_attempts < 1):
        raise ValueError(f"`max_attempts` must be a positive integer, not {max_attempts!r}")
    params: Dict[str, Any] = {"task": task, "payload": payload}
    if key is not None:
        params["key"] = key
    if priority:
        params["priority"] = True
    if dedupe:
        params["dedupe"] = True
    if max_attempts is not None:
        params["max_attempts"] = max_attempts
    return params


def _task_id(answer: Any) -> TaskId:
    if not isinstance(answer, dict) or not _is_int(answer.get("id")):
        raise HostError("failed", f"The host answered `task.submit` with {answer!r}, not "
                        "`{id, deduped}`")
    return TaskId(answer["id"], answer.get("deduped") is True)


class _Tasks:
    """The plugin's task handlers and the `task.run`s in flight (by request id)."""

    def __init__(self, plugin: "Plugin") -> None:
        self._plugin = plugin
        self.handlers: Dict[str, _TaskHandler] = {}
        self.after_last: Dict[str, _TaskHandler] = {}
        # `task.run` request id -> (its asyncio Task, or None for a thread; its context).
        self._running: Dict[int, Tuple[Optional["asyncio.Task[Any]"], TaskContext]] = {}
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None

    def add(self, name: str, fn: Callable[..., Any], input: Any) -> None:
        if not isinstance(name, str) or not _TASK_NAME.match(name):
            raise ValueError(
                f"Invalid task name `{name}`: use letters, digits, `_`, `.` and `-`, starting "
                "with a letter, at most 64 characters")
        if name in self.handlers:
            raise ValueError(f"Task `{name}` is registered twice")
        self.handlers[name] = _task_handler(name, fn, input)

    def add_after_last(self, key: str, fn: Callable[..., Any]) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("`after_last` needs a non-empty key")
        if key in self.after_last:
            raise ValueError(f"An `after_last` hook for key `{key}` is registered twice")
        self.after_last[key] = _task_handler(AFTER_LAST, fn, None)

    # -- host → plugin

    def on_run(self, id_: Any, params: Any) -> None:
        plugin = self._plugin
        if not _is_int(id_):
            return  # a notification: nobody to answer
        if (not isinstance(params, dict) or not isinstance(params.get("task"), str)
                or not _is_int(params.get("id"))):
            plugin._send_error(id_, INVALID_PARAMS,
                               "`task.run` needs params `{id, task, payload, attempt}`")
            return
        name = params["task"]
        payload = params.get("payload")
        key = params.get("key")
        if not isinstance(key, str):
            key = None
        if name == AFTER_LAST:
            if key is None and isinstance(payload, dict) and isinstance(payload.get("key"), str):
                key = payload["key"]
            handler = self.after_last.get(key) if key is not None else None
            if handler is None:  # no hook for this key: nothing to do
                plugin._send('{"jsonrpc":"2.0","id":%d,"result":null}\n' % id_)
                return
            arg: Any = key
        else:
            handler = self.handlers.get(name)
            if handler is None:
                plugin._send_error(id_, UNKNOWN_ACTION,
                                   f"Unknown task `{name}`; hint: register a handler with "
                                   f"`@plugin.task(\"{name}\")`", {"action": name})
                return
            arg = payload
        if plugin._shutting_down:
            # Not run at all: let the host run it again (in the next child).
            plugin._send_error(id_, ACTION_FAILED, "The plugin is shutting down",
                               {"type": "ShuttingDown", "code": TASK_RETRY})
            return
        if handler.validate is not None:
            try:
                arg = handler.validate(arg)
            except ValidationFailed as exc:
                plugin._send_error(id_, BAD_PAYLOAD,
                                   f"Payload rejected by the input model of task `{name}`: {exc}",
                                   {"errors": exc.errors})
                return
        attempt = params.get("attempt")
        deadline_ms = params.get("deadline_ms")
        deadline = None
        if isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool):
            deadline = time.monotonic() + deadline_ms / 1000.0
        ctx = TaskContext(plugin, params["id"], name, key, attempt if _is_int(attempt) else 1,
                          deadline)
        args = (arg, ctx) if handler.with_ctx else (arg,)
        if handler.is_async:
            self._start_async(id_, handler, args, ctx)
        else:
            self._start_sync(id_, handler, args, ctx)

    def on_cancel(self, params: Any) -> bool:
        """`cancel` of a running `task.run`: True when it was one (it is answered later)."""
        id_ = params.get("id") if isinstance(params, dict) else None
        if not _is_int(id_):
            return False
        running = self._running.get(id_)
        if running is None:
            return False
        task, ctx = running
        ctx._cancel.set()
        if task is not None and not task.done():
            task.cancel()
        return True

    # -- running

    def _start_async(self, id_: int, handler: _TaskHandler, args: Tuple[Any, ...],
                     ctx: TaskContext) -> None:
        plugin = self._plugin
        try:
            task = plugin._loop.create_task(handler.fn(*args))  # type: ignore[union-attr]
        except Exception as exc:  # calling the function itself raised
            plugin._send(self._error_frame(id_, ctx, exc))
            return
        self._running[id_] = (task, ctx)
        plugin._background.add(task)
        task.add_done_callback(lambda t: self._async_done(id_, ctx, t))

    def _async_done(self, id_: int, ctx: TaskContext, task: "asyncio.Task[Any]") -> None:
        plugin = self._plugin
        self._running.pop(id_, None)
        plugin._background.discard(task)
        if task.cancelled():
            frame = self._error_frame(id_, ctx, asyncio.CancelledError())
        else:
            exc = task.exception()
            frame = (self._error_frame(id_, ctx, exc) if exc is not None
                     else self._result_frame(id_, ctx, task.result()))
        plugin._send(frame)  # nothing is written after EOF
        if plugin._shutting_down:
            plugin._maybe_finish()

    def _start_sync(self, id_: int, handler: _TaskHandler, args: Tuple[Any, ...],
                    ctx: TaskContext) -> None:
        plugin = self._plugin
        if self._executor is None:
            # Tasks have their own threads: a long task never holds a thread a call needs.
            limit = plugin.limits.get("tasks")
            workers = limit if _is_int(limit) and limit > 0 else DEFAULT_WORKERS
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(workers, 1024), thread_name_prefix="plugd-task")
        self._running[id_] = (None, ctx)
        # Counted with the calls' threads, so `run()` does not wait for a busy one at EOF.
        plugin._threads_busy += 1
        self._executor.submit(self._run_sync, id_, handler, args, ctx)

    def _run_sync(self, id_: int, handler: _TaskHandler, args: Tuple[Any, ...],
                  ctx: TaskContext) -> None:
        # Runs in a worker thread; the answer is encoded here and written by the loop thread.
        try:
            frame = self._result_frame(id_, ctx, handler.fn(*args))
        except Exception as exc:
            frame = self._error_frame(id_, ctx, exc)
        plugin = self._plugin
        try:
            plugin._loop.call_soon_threadsafe(self._sync_done, id_, frame)  # type: ignore[union-attr]
        except RuntimeError:  # pragma: no cover - the loop is closed: nobody to answer
            plugin._threads_busy -= 1

    def _sync_done(self, id_: int, frame: str) -> None:
        plugin = self._plugin
        plugin._threads_busy -= 1
        self._running.pop(id_, None)
        plugin._send(frame)
        if plugin._shutting_down:
            plugin._maybe_finish()

    # -- answers

    def _result_frame(self, id_: int, ctx: TaskContext, value: Any) -> str:
        try:
            body = _encode(value)
        except (TypeError, ValueError) as exc:
            return self._error_frame(id_, ctx, exc,
                                     f"The task result is not JSON-serialisable: {exc}")
        return '{"jsonrpc":"2.0","id":%d,"result":%s}\n' % (id_, body)

    def _error_frame(self, id_: int, ctx: TaskContext, exc: BaseException,
                     message: Optional[str] = None) -> str:
        """`-32003` for a run that raised: ``data.code`` is ``cancelled`` once the host asked to
        stop, ``retry`` for `Retry` (or ``retryable = True``), else the exception's ``code``."""
        plugin = self._plugin
        data: Dict[str, Any] = {"type": type(exc).__name__}
        what = f"Task `{ctx.task}` {ctx.id}" + (f" (key `{ctx.key}`)" if ctx.key else "")
        if ctx.cancelled:
            data["code"] = TASK_CANCELLED
            if isinstance(exc, asyncio.CancelledError):
                message = message or "The task was cancelled"
            plugin.log.info("%s stopped after a cancel: %s", what, message or exc or
                            type(exc).__name__)
        elif getattr(exc, "retryable", False) is True:
            data["code"] = TASK_RETRY
            plugin.log.warning("%s, attempt %d, asks for a retry: %s", what, ctx.attempt,
                               exc or type(exc).__name__)
        else:
            code = getattr(exc, "code", None)
            if isinstance(code, (str, int)) and not isinstance(code, bool):
                data["code"] = code
            if isinstance(exc, asyncio.CancelledError):
                message = message or "The task was cancelled"
            else:
                plugin.log.error("%s failed: %s: %s", what, type(exc).__name__, exc,
                                 exc_info=(type(exc), exc, exc.__traceback__))
        return plugin._error_frame(id_, ACTION_FAILED,
                                   message or str(exc) or type(exc).__name__, data)

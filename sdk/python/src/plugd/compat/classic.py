"""Runs a class-based plugin (`plugin.json` with `class_path`, written against
``core.base_plugin.BasePlugin``) unchanged.

Config: ``{"format": "classic", "module": "plugin", "class": "ClientManagerPlugin",
"name": "client_manager", "version": "1.0.0", "description": "...", "author": "...",
"dependencies": []}`` (all but ``module``, ``class`` and ``name`` optional).

Before the plugin's module is imported, the modules ``core`` and ``core.base_plugin`` are put
in `sys.modules`, providing `BasePlugin` and `PluginMetadata`. The module is imported from the
package's shadow root (see `plugd.compat._common`: a `data` folder beside it is the data dir),
and the class is created as ``cls(runtime)`` (``cls()`` when its ``__init__`` takes no
argument; ``runtime`` is set on the instance either way).

The `Runtime` maps the framework's services onto plugd's:

- ``runtime.storage``: `Storage`, namespaced keys on plugd's kv (``NAMESPACE/KEY``).
- ``runtime.event_bus`` (alias ``runtime.events``): `EventBus`; ``publish`` reaches the
  plugin's own subscribers and other plugins (``plugin.emit``); plugd events delivered to the
  plugin reach the local subscribers whose pattern matches.
- ``runtime.service_registry`` (alias ``runtime.services``): `ServiceRegistry`; a registered
  service is also an action: ``example.hello`` answers the action ``example.hello``, and
  ``hello`` when no other service ends with ``.hello``. The framework's built-in
  ``logger.log(level=..., message=..., **fields)`` writes to the plugin's log.
- ``runtime.plugd``: the SDK `Plugin`, for anything else.

Lifecycle: ``on_load`` then ``on_start`` when plugd starts the plugin, ``on_stop`` then
``on_unload`` when it stops it (each once per process).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import sys
import types
from typing import (TYPE_CHECKING, Any, Callable, Dict, Generator, List, Mapping, Optional, Set,
                    Tuple)

from .._types import ClientError, HostError
from ._common import ConfigError, maybe_await, plugin_code, prepare_shadow

if TYPE_CHECKING:
    from .._plugin import Plugin

__all__ = ["BasePlugin", "EventBus", "PluginMetadata", "Runtime", "ServiceRegistry", "Storage",
           "load"]

_TRUE = ("true", "1", "yes", "on")
# Built-in services of the framework, served by the runtime itself (not actions).
_LOGGER_SERVICE = "logger.log"


class _Done:
    """An already-finished awaitable: methods the framework awaits in some plugins and calls
    plainly in others (``register``, ``subscribe``...) return it, so both spellings work."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()  # finishes at once, with None


@dataclasses.dataclass
class PluginMetadata:
    """A plugin's identity, as in ``plugin.json``."""

    name: str
    version: str
    description: str = ""
    author: str = ""
    dependencies: Optional[List[str]] = dataclasses.field(default_factory=list)


# What `load` binds before the plugin's module is imported: the SDK plugin and the metadata of
# `plugin.json`, used by `BasePlugin` (one plugin per process).
_plugd: Optional["Plugin"] = None
_metadata: Optional[PluginMetadata] = None


class BasePlugin:
    """The base class of class-based plugins (``from core.base_plugin import BasePlugin``).

    ``runtime`` is the `Runtime`; ``metadata`` defaults to the `PluginMetadata` of
    ``plugin.json`` (a subclass may define its own ``metadata`` property), ``name`` to
    ``metadata.name``. Override the async lifecycle methods ``on_load``, ``on_start``,
    ``on_stop`` and ``on_unload``.
    """

    def __init__(self, runtime: Optional["Runtime"] = None) -> None:
        self._runtime = runtime
        self._metadata = _metadata

    @property
    def runtime(self) -> Optional["Runtime"]:
        """The `Runtime` (set by the runner)."""
        return self._runtime

    @runtime.setter
    def runtime(self, value: Optional["Runtime"]) -> None:
        self._runtime = value

    @property
    def metadata(self) -> PluginMetadata:
        """The plugin's `PluginMetadata` (``plugin.json``'s, even when a subclass's
        ``__init__`` skipped this one)."""
        return self.__dict__.get("_metadata", _metadata)

    @metadata.setter
    def metadata(self, value: PluginMetadata) -> None:
        self._metadata = value

    @property
    def name(self) -> str:
        """The plugin's name (``metadata.name`` unless set)."""
        return self.__dict__.get("_name") or self.metadata.name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def get_env_config(self, key: str, default: Optional[str] = None,
                       prefix: Optional[str] = None) -> Optional[str]:
        """The host variable ``{PREFIX}_{KEY}``, else ``KEY``, else ``default``.

        ``PREFIX`` defaults to the plugd name of the plugin, upper-cased with `-` as `_`
        (``classic-hello`` → ``CLASSIC_HELLO_GREETING``). Variables come from the host
        (`permissions.env`); one it refuses counts as unset.
        """
        plugd = _bound_plugin()
        if prefix is None:
            prefix = plugd.name.upper().replace("-", "_")
        for name in (f"{prefix}_{key}", key):
            try:
                value = plugd.env(name)
            except HostError:
                value = None
            if value is not None:
                return value
        return default

    def get_env_config_int(self, key: str, default: Optional[int] = None,
                           prefix: Optional[str] = None) -> Optional[int]:
        """`get_env_config` as an ``int``; ``default`` when unset or not an integer."""
        value = self.get_env_config(key, None, prefix)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            return default

    def get_env_config_bool(self, key: str, default: bool = False,
                            prefix: Optional[str] = None) -> bool:
        """`get_env_config` as a ``bool`` (true for 1/true/yes/on, any case); ``default`` when
        unset."""
        value = self.get_env_config(key, None, prefix)
        if value is None:
            return default
        return value.strip().lower() in _TRUE

    async def on_load(self) -> None:
        """Called first when the plugin starts: register services, subscribe to events."""

    async def on_start(self) -> None:
        """Called after `on_load`: start background work."""

    async def on_stop(self) -> None:
        """Called first when the plugin stops: stop background work."""

    async def on_unload(self) -> None:
        """Called last: release what `on_load` set up."""


def _bound_plugin() -> "Plugin":
    if _plugd is None:
        raise RuntimeError("`core.base_plugin` is only usable in a plugin run by "
                           "`python -m plugd.compat`")
    return _plugd


def _key(namespace: str, key: str) -> str:
    if not isinstance(namespace, str) or not namespace or "/" in namespace:
        raise ValueError(f"Invalid storage namespace {namespace!r}: use a non-empty string "
                         "without `/`")
    return f"{namespace}/{key}"


class Storage:
    """``runtime.storage``: persistent values by namespace and key, kept in plugd's kv under
    ``NAMESPACE/KEY`` (values are JSON)."""

    def __init__(self, plugin: "Plugin") -> None:
        self._plugin = plugin

    async def get(self, namespace: str, key: str, default: Any = None) -> Any:
        """The value of ``key`` in ``namespace``, or ``default``."""
        return await self._plugin.kv.get(_key(namespace, key), default)

    async def set(self, namespace: str, key: str, value: Any) -> None:
        """Stores ``value`` (any JSON value) under ``key``."""
        await self._plugin.kv.set(_key(namespace, key), value)

    async def delete(self, namespace: str, key: str) -> None:
        """Removes ``key`` (nothing happens when it is absent)."""
        await self._plugin.kv.delete(_key(namespace, key))

    async def list_keys(self, namespace: str, prefix: str = "") -> List[str]:
        """The keys of ``namespace`` that start with ``prefix``, sorted (without the
        namespace)."""
        start = _key(namespace, "")
        items = await self._plugin.kv.list(start + prefix)
        return [key[len(start):] for key, _ in items]


Handler = Callable[..., Any]


def _matches(pattern: str, topic: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return topic.startswith(pattern[:-1])
    return topic == pattern


class EventBus:
    """``runtime.event_bus``: handlers ``(topic, data)`` (`def` or `async def`) subscribed to an
    exact topic, a prefix ``image.*`` or ``*``.

    ``publish`` runs the matching local handlers (a failing one is logged) and publishes the
    event through plugd (``plugin.emit``; a refusal, e.g. without the `events` service, is
    logged once per topic). Events plugd delivers to the plugin (its manifest's subscriptions)
    run the matching local handlers; the first failure fails the delivery.
    """

    def __init__(self, plugin: "Plugin") -> None:
        self._plugin = plugin
        self._handlers: List[Tuple[str, Handler]] = []
        self._refused: Set[str] = set()  # topics whose refusal was logged

    def subscribe(self, topic: str, handler: Handler) -> _Done:
        """Adds ``handler`` for ``topic``; may be awaited."""
        if not callable(handler):
            raise TypeError(f"The handler for `{topic}` must be callable, not "
                            f"{type(handler).__name__}")
        self._handlers.append((topic, handler))
        return _Done()

    def unsubscribe(self, topic: str, handler: Handler) -> _Done:
        """Removes ``handler`` from ``topic`` (nothing when it was not subscribed); may be
        awaited."""
        self._handlers = [(t, h) for t, h in self._handlers if not (t == topic and h == handler)]
        return _Done()

    async def publish(self, topic: str, data: Any = None) -> None:
        """Delivers ``data`` to the local handlers of ``topic``, then publishes it to plugd."""
        for handler, exc in await self._run(topic, data):
            self._log_failure(handler, topic, exc)
        try:
            await self._plugin.emit(topic, data)
        except HostError as exc:
            if topic not in self._refused:
                self._refused.add(topic)
                self._plugin.log.warning(
                    "The host refused to publish `%s` to other plugins (%s); local subscribers "
                    "got it; hint: add `events` to `permissions.services`", topic, exc)

    async def deliver(self, topic: str, data: Any) -> None:
        """Runs the local handlers of an event plugd delivered; raises the first failure."""
        failures = await self._run(topic, data)
        for handler, exc in failures[1:]:
            self._log_failure(handler, topic, exc)
        if failures:
            raise failures[0][1]

    def _log_failure(self, handler: Handler, topic: str, exc: Exception) -> None:
        self._plugin.log.error("Event handler `%s` failed on `%s`: %s: %s",
                               getattr(handler, "__name__", handler), topic, type(exc).__name__,
                               exc, exc_info=(type(exc), exc, exc.__traceback__))

    async def _run(self, topic: str, data: Any) -> List[Tuple[Handler, Exception]]:
        failures: List[Tuple[Handler, Exception]] = []
        for pattern, handler in list(self._handlers):
            if _matches(pattern, topic):
                try:
                    await maybe_await(handler(topic, data))
                except Exception as exc:
                    failures.append((handler, exc))
        return failures


class ServiceRegistry:
    """``runtime.service_registry``: named functions (`def` or `async def`) the plugin offers;
    each is also one of its plugd actions.

    ``call(name, ...)`` runs a local service; another name ``PLUGIN.ACTION`` calls that plugd
    plugin's action (a declared dependency) with the keyword arguments as payload (or the
    first positional argument). ``logger.log(level=..., message=...)`` writes to the plugin's
    log.
    """

    def __init__(self, plugin: "Plugin") -> None:
        self._plugin = plugin
        self._services: Dict[str, Handler] = {}

    def register(self, name: str, fn: Handler) -> _Done:
        """Offers ``fn`` as the service ``name`` (replacing one of that name); may be awaited."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A service needs a non-empty name, not {name!r}")
        if not callable(fn):
            raise TypeError(f"Service `{name}` must be callable, not {type(fn).__name__}")
        self._services[name] = fn
        return _Done()

    def unregister(self, name: str) -> _Done:
        """Withdraws the service ``name`` (nothing when absent); may be awaited."""
        self._services.pop(name, None)
        return _Done()

    def has_service(self, name: str) -> bool:
        """Whether the plugin registered the service ``name``."""
        return name in self._services

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Runs the service ``name`` (local first, then ``PLUGIN.ACTION`` through plugd)."""
        fn = self._services.get(name)
        if fn is not None:
            return await maybe_await(fn(*args, **kwargs))
        if name == _LOGGER_SERVICE:
            return self._log(*args, **kwargs)
        target, dot, action = name.partition(".")
        if not dot or not target or not action:
            raise LookupError(f"No service `{name}`: it is not registered here, and it is not "
                              "`PLUGIN.ACTION` of another plugd plugin")
        payload = kwargs if kwargs else (args[0] if args else {})
        return await self._plugin.call(target, action, payload)

    def _log(self, *args: Any, level: str = "info", message: str = "", **extra: Any) -> None:
        """The framework's ``logger.log`` service: one record in the plugin's log."""
        number = logging.getLevelName(str(level).upper())  # "INFO" -> 20; unknown -> a string
        parts = [str(part) for part in (message, *args) if part != ""]
        parts += [f"{key}={value}" for key, value in extra.items()]
        self._plugin.log.log(number if isinstance(number, int) else logging.INFO, "%s",
                             " ".join(parts))

    def resolve(self, action: str) -> Handler:
        """The service an action names: its full name, or the part after its last dot when no
        other service shares it. Raises `ClientError` ``unknown_action`` (404) otherwise."""
        fn = self._services.get(action)
        if fn is not None:
            return fn
        short = [name for name in self._services if name.rsplit(".", 1)[-1] == action]
        if len(short) == 1:
            return self._services[short[0]]
        available = ", ".join(sorted(self._services)) or "none"
        if short:
            raise ClientError("unknown_action", f"`{action}` is ambiguous: it may be "
                              f"{', '.join(sorted(short))}; hint: use the full name", status=404)
        raise ClientError("unknown_action", f"No service `{action}`; available: {available}",
                          status=404)


class Runtime:
    """What class-based plugins get as ``self.runtime``: ``storage``, ``event_bus`` (alias
    ``events``), ``service_registry`` (alias ``services``) and ``plugd`` (the SDK `Plugin`)."""

    def __init__(self, plugin: "Plugin") -> None:
        self.plugd = plugin
        self.storage = Storage(plugin)
        self.event_bus = EventBus(plugin)
        self.service_registry = ServiceRegistry(plugin)
        self.events = self.event_bus
        self.services = self.service_registry


def _install_core_modules() -> None:
    """Puts ``core`` and ``core.base_plugin`` in `sys.modules` (the framework's import paths)."""
    core = types.ModuleType("core", "plugd's stand-in for the class-based plugin framework")
    core.__path__ = []  # a package: `core.base_plugin` is its submodule
    base_plugin = types.ModuleType("core.base_plugin", "`BasePlugin` and `PluginMetadata`")
    base_plugin.BasePlugin = BasePlugin  # type: ignore[attr-defined]
    base_plugin.PluginMetadata = PluginMetadata  # type: ignore[attr-defined]
    core.base_plugin = base_plugin  # type: ignore[attr-defined]
    sys.modules["core"] = core
    sys.modules["core.base_plugin"] = base_plugin


def _call_with_payload(fn: Handler, payload: Any) -> Any:
    """Calls a service with an action's payload: as keyword arguments when it is a dict the
    function accepts that way, else as one argument (``null`` counts as ``{}``)."""
    if payload is None:
        payload = {}
    if isinstance(payload, dict):
        try:
            inspect.signature(fn).bind(**payload)
        except TypeError:
            pass
        except ValueError:  # no signature to check
            return fn(payload)
        else:
            return fn(**payload)
    return fn(payload)


def load(plugin: "Plugin", config: Mapping[str, Any]) -> None:
    """Imports the class-based plugin of the config and wires it to ``plugin``."""
    global _plugd, _metadata
    module_name: str = config["module"]
    class_name: str = config["class"]
    _plugd = plugin
    _metadata = PluginMetadata(name=config["name"], version=config.get("version", ""),
                               description=config.get("description", ""),
                               author=config.get("author", ""),
                               dependencies=list(config.get("dependencies") or []))
    prepare_shadow()
    _install_core_modules()
    with plugin_code(f"Importing module `{module_name}`"):
        module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise ConfigError(f"Module `{module_name}` defines no class `{class_name}`; hint: check "
                          "`class_path` in plugin.json")
    if not issubclass(cls, BasePlugin):
        raise ConfigError(f"`{class_name}` of module `{module_name}` does not subclass "
                          "`BasePlugin`; hint: `from core.base_plugin import BasePlugin`")
    runtime = Runtime(plugin)
    with plugin_code(f"Creating `{class_name}`"):
        instance = cls(runtime) if _takes_argument(cls) else cls()
    instance.runtime = runtime
    bus = runtime.event_bus
    registry = runtime.service_registry

    @plugin.on_start
    async def start() -> None:
        await maybe_await(instance.on_load())
        await maybe_await(instance.on_start())

    @plugin.on_stop
    async def stop() -> None:
        try:
            await maybe_await(instance.on_stop())
        finally:
            await maybe_await(instance.on_unload())

    @plugin.on_event("*")
    async def on_event(topic: str, payload: Any) -> None:
        await bus.deliver(topic, payload)

    async def dispatch(action: str, payload: Any) -> Any:
        return await maybe_await(_call_with_payload(registry.resolve(action), payload))

    plugin.fallback(dispatch, eager=False)


def _takes_argument(cls: type) -> bool:
    """Whether ``cls(...)`` accepts one positional argument (the runtime)."""
    try:
        inspect.signature(cls).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature to read
        return True
    return True


"""Runs an xcore plugin (`plugin.yaml` with `entry_point`, usually `src/main.py`) unchanged.

Config: ``{"format": "xcore", "entry": "src/main.py", "name": "notes manager",
"env": {"DB_URL": "${DB_URL}/notes"}}`` (``env`` optional).

The entry file defines ``class Plugin`` with ``async handle(action, payload) -> dict`` and,
optionally, ``env_variable(env)``, ``on_load()``, ``on_unload()`` (each `def` or `async def`).

- **Loading**: as xcore's worker does, the entry is imported as a module of a package whose
  path is the entry's folder (so ``from .utils import x`` works), through the shadow root (see
  `plugd.compat._common`: ``Path(__file__).parent.parent / "data"`` is the data dir).
- **Instance**: ``Plugin()``; when its ``__init__`` requires an argument ``services``,
  ``Plugin(services=services)`` with the dict ``{"kv": plugin.kv, "plugd": plugin}``: plugd's
  key-value store (async `get`/`set`/`delete`/`list`/`commit`/`undo`/`redo`) and the SDK
  `Plugin` itself (`call`, `emit`, `env_async`, `log`, ...).
- **Start**: the ``${VAR}`` references in ``env`` are replaced by the host's variables
  (`substitute_env`), ``env_variable(env)`` gets the result, then ``on_load()`` runs.
  **Stop**: ``on_unload()``. plugd reloads a plugin by starting a new process, which runs
  ``on_load`` again: ``on_reload()`` is never called.
- **Calls**: every action goes to ``handle(action, payload)`` (a ``null`` payload as ``{}``).
  Its answer ``{"status": "ok", ...rest}`` is the result object ``rest`` (the other keys,
  without ``status``); ``{"status": "error", "msg": M, "code": C}`` is the client error
  ``C`` with message ``M`` and the HTTP status ``ERROR_STATUS[C]`` (400 for a code not in the
  table, code kept), and without a code the client error ``plugin_error`` (400). Any other
  answer (not a dict, no ``status``, another status) is the result unchanged. An exception
  raised by ``handle`` fails the call and is logged with its traceback.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
from typing import TYPE_CHECKING, Any, Dict, Mapping

from .._types import ClientError
from ._common import ConfigError, maybe_await, plugin_code, prepare_shadow, substitute_env

if TYPE_CHECKING:
    from .._plugin import Plugin

__all__ = ["ERROR_STATUS", "load", "map_answer"]

# The HTTP status of each xcore error code (any other code: 400). 401 and 403 are the host's
# own (authentication), so `unauthorized` and `forbidden` answer 400 and keep their code.
ERROR_STATUS: Dict[str, int] = {
    "not_found": 404,
    "invalid": 400,
    "invalid_input": 400,
    "bad_request": 400,
    "validation_error": 400,
    "unauthorized": 400,
    "forbidden": 400,
    "conflict": 409,
    "already_exists": 409,
    "rate_limited": 429,
    "too_many_requests": 429,
    "timeout": 408,
    "unprocessable": 422,
}

# The package the entry module lives in (xcore uses `xcore_plugin_<hash>`).
_PACKAGE = "xcore_plugin"


def map_answer(answer: Any) -> Any:
    """The result of an xcore ``handle`` answer, or the `ClientError` it stands for (raised)."""
    if not isinstance(answer, dict) or "status" not in answer:
        return answer
    status = answer["status"]
    if status == "ok":
        return {key: value for key, value in answer.items() if key != "status"}
    if status != "error":
        return answer
    msg = answer.get("msg")
    message = str(msg) if msg not in (None, "") else "The plugin answered an error without `msg`"
    code = answer.get("code")
    if code in (None, ""):
        raise ClientError("plugin_error", message, status=400)
    code = str(code)
    raise ClientError(code, message, status=ERROR_STATUS.get(code, 400))


def load(plugin: "Plugin", config: Mapping[str, Any]) -> None:
    """Imports the xcore plugin of the config and wires it to ``plugin`` (hooks, fallback)."""
    entry_text: str = config["entry"]
    env: Mapping[str, Any] = config.get("env") or {}
    shadow = prepare_shadow()
    entry = shadow.path(entry_text)
    if entry.suffix != ".py" or not entry.is_file():
        raise ConfigError(f"The entry point `{entry_text}` is not a Python file of the package; "
                          "hint: set `entry_point` in plugin.yaml to the file defining "
                          "`class Plugin`, like `src/main.py`")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(entry.parent)]
    sys.modules[_PACKAGE] = package
    module_name = f"{_PACKAGE}.{entry.stem}"
    spec = importlib.util.spec_from_file_location(module_name, entry)
    assert spec is not None and spec.loader is not None  # a `.py` file always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with plugin_code(f"Importing `{entry_text}`"):
        spec.loader.exec_module(module)
    cls = getattr(module, "Plugin", None)
    if not inspect.isclass(cls):
        raise ConfigError(f"`{entry_text}` defines no `class Plugin`; hint: the xcore entry "
                          "point must define the plugin class under that name")
    if not callable(getattr(cls, "handle", None)):
        raise ConfigError(f"`Plugin` in `{entry_text}` has no method `handle(action, payload)`")
    with plugin_code(f"Creating `Plugin` of `{entry_text}`"):
        instance = _instantiate(cls, entry_text, {"kv": plugin.kv, "plugd": plugin})

    @plugin.on_start
    async def start() -> None:
        substituted = await substitute_env(plugin, env)
        if callable(getattr(instance, "env_variable", None)):
            await maybe_await(instance.env_variable(substituted))
        if callable(getattr(instance, "on_load", None)):
            await maybe_await(instance.on_load())

    @plugin.on_stop
    async def stop() -> None:
        if callable(getattr(instance, "on_unload", None)):
            await maybe_await(instance.on_unload())

    async def dispatch(action: str, payload: Any) -> Any:
        answer = await maybe_await(instance.handle(action, {} if payload is None else payload))
        return map_answer(answer)

    # In a Task from the start: `handle` may use anything asyncio offers (`asyncio.timeout`...).
    plugin.fallback(dispatch, eager=False)


def _instantiate(cls: type, entry: str, services: Dict[str, Any]) -> Any:
    """``cls()``, or ``cls(services=services)`` when its ``__init__`` requires ``services``."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C class): call it plainly
        return cls()
    required = [p for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not required:
        return cls()
    if len(required) == 1 and required[0].name == "services" \
            and required[0].kind is not required[0].POSITIONAL_ONLY:
        return cls(services=services)
    names = ", ".join(f"`{p.name}`" for p in required)
    raise ConfigError(f"`Plugin.__init__` in `{entry}` requires {names}; hint: the runner "
                      "creates it as xcore does, with no argument or with `services` only")

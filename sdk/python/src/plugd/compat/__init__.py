"""Runs plugins written for other plugin systems, unchanged, as plugd process plugins.

plugd translates such a plugin's manifest and starts it as ``python3 -m plugd.compat
'<JSON>'``, with the (read-only) package dir as the current dir, ``PLUGD_DATA_DIR`` its data dir
and ``PLUGD_PLUGIN`` its plugd name. The one argument is a JSON object whose ``format`` picks
the runner; ``name`` is the plugin's original name (it may contain spaces):

- ``{"format": "xcore", "entry": "src/main.py", "name": "notes manager",
  "env": {"DB_URL": "${DB_URL}/notes", "MODE": "fast"}}``: an xcore plugin
  (`plugd.compat.xcore`); ``env`` is optional.
- ``{"format": "classic", "module": "plugin", "class": "ClientManagerPlugin",
  "name": "client_manager", "version": "1.0.0", "description": "...", "author": "...",
  "dependencies": []}``: a class-based plugin on ``core.base_plugin.BasePlugin``
  (`plugd.compat.classic`); ``version``, ``description``, ``author`` and ``dependencies``
  are optional.
- ``{"format": "panoptic", "name": "my_plugin"}``: a Panoptic image-tool plugin
  (`plugd.compat.panoptic`).

Each runner maps the package's `data/` folder onto the data dir and seeds it on the first start
(`plugd.compat._common`), imports the plugin, and serves every action through
`Plugin.fallback`. A bad argument or package prints the reason to stderr (which plugd shows in
the plugin's log) and exits 2; an exception raised by the plugin's own code while it loads
prints the reason and its traceback and exits 1.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from ._common import ConfigError, LoadError

__all__ = ["EXIT_CONFIG", "EXIT_LOAD", "main", "parse_config"]

EXIT_CONFIG = 2
EXIT_LOAD = 1

# Per format: its required keys and its optional keys, each with the JSON type it must have.
_STR, _OBJECT, _LIST = (str,), (dict,), (list,)
_KEYS: Dict[str, Tuple[Dict[str, Tuple[type, ...]], Dict[str, Tuple[type, ...]]]] = {
    "xcore": ({"entry": _STR, "name": _STR}, {"env": _OBJECT}),
    "classic": ({"module": _STR, "class": _STR, "name": _STR},
                {"version": _STR, "description": _STR, "author": _STR, "dependencies": _LIST}),
    "panoptic": ({"name": _STR}, {}),
}
_TYPE_NAMES = {str: "a string", dict: "an object", list: "an array"}
_USAGE = ("usage: python3 -m plugd.compat '<JSON>'; hint: plugd starts this runner itself for "
          "plugins in a foreign format (xcore, classic, panoptic)")


def parse_config(argv: Sequence[str]) -> Dict[str, Any]:
    """The runner's config from its arguments (exactly one: the JSON object), checked against
    the keys of its format. Raises `ConfigError` naming what is wrong."""
    if len(argv) != 1:
        raise ConfigError(f"Expected one argument, got {len(argv)}; {_USAGE}")
    try:
        config = json.loads(argv[0])
    except ValueError as exc:
        raise ConfigError(f"The argument is not JSON ({exc}): {argv[0][:200]!r}; {_USAGE}") \
            from None
    if not isinstance(config, dict):
        raise ConfigError(f"The argument must be a JSON object, not {type(config).__name__}")
    fmt = config.get("format")
    if fmt not in _KEYS:
        raise ConfigError(f"Unknown `format` {fmt!r}; hint: use one of {', '.join(_KEYS)}")
    required, optional = _KEYS[fmt]
    for key in optional:
        if key in config and config[key] is None:  # `null` for an optional key: absent
            del config[key]
    for key, types in {**required, **optional}.items():
        if key in config and not isinstance(config[key], types):
            raise ConfigError(f"`{key}` of the {fmt} config must be {_TYPE_NAMES[types[0]]}, "
                              f"not {type(config[key]).__name__}")
    missing = [key for key in required if not config.get(key)]
    if missing:
        raise ConfigError(f"The {fmt} config lacks {', '.join(f'`{k}`' for k in missing)}")
    unknown = sorted(set(config) - {"format", *required, *optional})
    if unknown:
        raise ConfigError(f"Unknown keys in the {fmt} config: {', '.join(unknown)}; known: "
                          f"{', '.join(['format', *required, *optional])}")
    return config


def _loader(fmt: str) -> Callable[[Any, Mapping[str, Any]], None]:
    if fmt == "xcore":
        from .xcore import load
    elif fmt == "classic":
        from .classic import load
    else:
        from .panoptic import load
    return load


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parses the config, loads the plugin and serves it (`Plugin.run`, which exits); returns
    the exit code when it cannot start."""
    from .._plugin import Plugin

    # The package is read-only (and signed): never try to write bytecode into it.
    sys.dont_write_bytecode = True
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
        plugin = Plugin()
        _loader(config["format"])(plugin, config)
    except ConfigError as exc:
        _report(str(exc))
        return EXIT_CONFIG
    except LoadError as exc:
        cause = exc.__cause__
        detail = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)) \
            if cause is not None else ""
        _report(f"{exc}; hint: fix the plugin's code or install what it imports (its "
                f"requirements)\n{detail}")
        return EXIT_LOAD
    plugin.run()  # exits the process with the plugin's exit code
    return 0


def _report(message: str) -> None:
    sys.stderr.write(f"plugd.compat: {message.rstrip()}\n")
    sys.stderr.flush()

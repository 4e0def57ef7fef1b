"""What the three compat runners share: the shadow root that maps `data/` onto the plugin's data
dir, the seeding of that dir, `${VAR}` substitution, and the errors that stop a runner.

## The shadow root, and why

Foreign plugins keep their files in a `data` folder inside their own package: xcore plugins use
``Path(__file__).parent.parent / "data"`` (the entry is `src/main.py`), class-based and
Panoptic-style plugins a `data` folder beside their modules. Under plugd the package directory
is read-only, and the plugin's writable place is its data dir (`PLUGD_DATA_DIR`).

So the runner builds a *shadow root*, a fresh temporary directory holding one symlink per
top-level entry of the package (``shadow/src -> PKG/src``, ``shadow/plugin.py ->
PKG/plugin.py``, ...), except ``data``, which links to the data dir. The plugin's code is
imported through the shadow path, with the shadow root first on `sys.path` (and the package
dir itself removed from it), so its `__file__` lies under the shadow root and every path it
derives from it reaches `data/` in the data dir. The shadow root is removed when the process
exits normally.

Limits: code that resolves its own path (``Path(__file__).resolve()``) follows the symlinks
back into the read-only package; only `data/` is writable and kept, while anything written
beside it in the shadow root is lost at exit.

## Seeding

A package may ship initial files in its own `data/`. On the first start (when the data dir has
no marker file `.plugd-seeded`) that tree is copied into the data dir, never overwriting a file
already there, and the marker is written; later starts leave the data dir alone, so what the
plugin wrote survives restarts and upgrades. Delete the marker to seed again (missing files
only).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import inspect
import os
import pathlib
import re
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping

if TYPE_CHECKING:
    from .._plugin import Plugin

__all__ = [
    "ConfigError",
    "LoadError",
    "SEED_MARKER",
    "Shadow",
    "maybe_await",
    "plugin_code",
    "prepare_shadow",
    "seed_data",
    "substitute_env",
]

SEED_MARKER = ".plugd-seeded"
_DATA = "data"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """The runner's JSON argument or the plugin's package is wrong (the process exits 2)."""


class LoadError(Exception):
    """The plugin's own code raised while it was imported or set up (the process exits 1);
    the original exception is its ``__cause__``."""


@contextlib.contextmanager
def plugin_code(what: str) -> Iterator[None]:
    """Runs a step that executes the plugin's code (``what``, e.g. "importing `src/main.py`"):
    any exception it raises becomes a `LoadError` naming the step."""
    try:
        yield
    except (ConfigError, LoadError):
        raise
    except Exception as exc:
        raise LoadError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


class Shadow:
    """The prepared package: ``root`` is its shadow root, where the plugin's code is imported
    from; ``package`` the real (read-only) package dir."""

    def __init__(self, root: pathlib.Path, package: pathlib.Path) -> None:
        self.root = root
        self.package = package

    def path(self, relative: str) -> pathlib.Path:
        """``relative`` (a path from the config, like `src/main.py`) under the shadow root, after
        checking that it stays inside the package, never in the data dir: code runs only from
        the signed package."""
        rel = pathlib.PurePosixPath(relative)
        if not relative or rel.is_absolute() or ".." in rel.parts:
            raise ConfigError(f"`{relative}` is not a relative path inside the package; hint: "
                              "give a path like `src/main.py`")
        if rel.parts[0] == _DATA:
            raise ConfigError(f"`{relative}` is in `data/`, the plugin's writable data dir; "
                              "hint: keep code in the package, like `src/main.py`")
        path = self.root.joinpath(*rel.parts)
        real = os.path.realpath(path)
        if not real.startswith(os.path.realpath(self.package) + os.sep):
            raise ConfigError(f"`{relative}` does not lead into the package")
        return path


class _NoDataImports(importlib.abc.MetaPathFinder):
    """Refuses to import the shadow root's `data` (the writable data dir) as a package: code
    runs only from the signed package, never from what the plugin wrote."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == _DATA or fullname.startswith(_DATA + "."):
            raise ImportError(f"plugd does not import `{fullname}`: `data` is the plugin's "
                              "writable data dir; keep code in the package")
        return None


def _shadow_dir(data: pathlib.Path) -> pathlib.Path:
    """A fresh, empty directory for the shadow root: in `/tmp` (a private tmpfs in the sandbox),
    or, where no temporary directory is writable (a host that is not root has no mount
    namespace, and Landlock allows writes to the data dir only), `DATA/.plugd-shadow`, rebuilt
    at every start so that nothing the plugin changed there outlives the process."""
    try:
        return pathlib.Path(tempfile.mkdtemp(prefix="plugd-compat-"))
    except OSError:
        fallback = data / ".plugd-shadow"
        shutil.rmtree(fallback, ignore_errors=True)
        try:
            fallback.mkdir(mode=0o700)
        except OSError as exc:
            raise ConfigError(f"No writable directory for the package's shadow root (neither a "
                              f"temporary directory nor `{fallback}`): {exc}") from exc
        return fallback


def prepare_shadow() -> Shadow:
    """Seeds the data dir, builds the shadow root of the package (the current dir, where plugd
    starts the runner) and puts it first on `sys.path`."""
    data_text = os.environ.get("PLUGD_DATA_DIR")
    if not data_text:
        raise ConfigError("`PLUGD_DATA_DIR` is not set; hint: the compat runner is started by "
                          "plugd, which sets it to the plugin's data dir")
    package = pathlib.Path.cwd()
    data = pathlib.Path(data_text).absolute()
    data.mkdir(parents=True, exist_ok=True)
    seed_data(package, data)
    root = _shadow_dir(data)
    # Symlinks are unlinked, never followed: the package and the data dir are left alone.
    atexit.register(shutil.rmtree, root, True)
    for entry in sorted(os.listdir(package)):
        if entry != _DATA:
            os.symlink(package / entry, root / entry)
    os.symlink(data, root / _DATA)
    sys.meta_path.insert(0, _NoDataImports())
    # Imports must go through the shadow root, never the package dir itself (where `python -m`
    # put the current dir).
    real = os.path.realpath(package)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != real]
    sys.path.insert(0, str(root))
    return Shadow(root, package)


def seed_data(package: pathlib.Path, data: pathlib.Path) -> bool:
    """Copies the package's `data/` tree into ``data`` unless it holds the marker
    `.plugd-seeded` (no existing file is overwritten), then writes the marker. True when it
    seeded. The copies are the plugin's own to change: owner-writable whatever the mode of the
    (read-only) package files, and not executable."""
    marker = data / SEED_MARKER
    if marker.exists():
        return False
    source = package / _DATA
    if source.is_dir():
        for dirpath, _dirnames, filenames in os.walk(source):
            rel = pathlib.Path(dirpath).relative_to(source)
            target_dir = data / rel
            target_dir.mkdir(parents=True, exist_ok=True)
            for name in filenames:
                target = target_dir / name
                if not target.exists():
                    shutil.copyfile(pathlib.Path(dirpath) / name, target)
                    os.chmod(target, 0o644)
    marker.write_text(f"Seeded from {source}; delete this file to seed the missing files again.\n")
    return True


async def substitute_env(plugin: "Plugin", env: Mapping[str, Any]) -> Dict[str, Any]:
    """``env`` with every ``${NAME}`` in its string values replaced by the host's variable
    ``NAME`` (`plugin.env_async`); other values pass unchanged.

    A variable the host refuses (not in `permissions.env`) or does not have becomes the empty
    string, with one warning naming it in the plugin's log (the host logs a refusal itself).
    """
    from .._types import HostError

    values: Dict[str, str] = {}
    for text in env.values():
        if not isinstance(text, str):
            continue
        for name in _VARIABLE.findall(text):
            if name in values:
                continue
            try:
                raw = await plugin.env_async(name)
            except HostError:
                raw = None
            if raw is None:
                plugin.log.warning(
                    "`${%s}` in the plugin's env is unset or not granted: it is replaced by an "
                    "empty string; hint: list `%s` in `permissions.env` and set it on the host",
                    name, name)
                raw = ""
            values[name] = raw
    return {key: _VARIABLE.sub(lambda m: values[m.group(1)], text) if isinstance(text, str)
            else text for key, text in env.items()}


async def maybe_await(value: Any) -> Any:
    """``value``, awaited first when it is awaitable (foreign hooks may be `def` or
    `async def`)."""
    if inspect.isawaitable(value):
        return await value
    return value

"""Host services for handlers: `plugin.kv` (async) and `plugin.kv_sync` (blocking twins for
sync handlers), and the conversion behind `plugin.env`.

Each method is one request of `docs/protocol.md` ("Host services"); a refusal or failure raises
`HostError` with the host's machine-readable ``code``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from ._plugin import Plugin

__all__ = ["Kv", "KvSync"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class Kv:
    """The plugin's key-value store in the host (service ``kv``), for ``async`` code.

    Keys are strings, values any JSON value. Every write is a commit with an id; ``undo`` and
    ``redo`` revert and re-apply whole commits.
    """

    def __init__(self, plugin: "Plugin") -> None:
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

    def __init__(self, plugin: "Plugin", kv: Kv) -> None:
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

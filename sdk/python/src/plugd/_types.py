"""Result types an action may return, and the errors the SDK raises.

The result shape is the one in `docs/protocol.md` ("Action results"), which the host validates:
``{"value": any, "notifications"?: [...], "groups"?: [...]}`` plus any other top-level fields,
passed through untouched.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = [
    "ActionResult",
    "ClientError",
    "Group",
    "HostError",
    "Notification",
    "NotificationAction",
    "Retry",
]

LEVELS = ("info", "success", "warning", "error")

# `data.code` of the host's error answers when an (older or foreign) host sent none.
_CODE_OF_RPC = {
    -32020: "not_granted",
    -32021: "too_many_requests",
    -32601: "unknown_method",
    -32602: "invalid_params",
    -32003: "failed",
    -32010: "protocol_refused",
}


class HostError(Exception):
    """The host refused or failed a request of the plugin (`kv.*`, `plugin.call`, `emit`, ...).

    ``code`` is a machine-readable string: the service's own code (``not_found``, ``conflict``,
    ``limit_exceeded``, ``cycle``, ``timeout``, a callee's error code such as
    ``plugin_failed``...) or one of ``not_granted``, ``unknown_method``, ``invalid_params``,
    ``too_many_requests``, ``failed``. ``message`` is the host's sentence, ``data`` its extra
    data and ``rpc_code`` the JSON-RPC error code of the frame (``-32020``, ``-32022``, ...).
    """

    def __init__(self, code: str, message: str, data: Any = None,
                 rpc_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.rpc_code = rpc_code

    @classmethod
    def from_rpc(cls, err: Any) -> "HostError":
        """The error for a JSON-RPC ``error`` object of the host."""
        if not isinstance(err, dict):
            return cls("failed", str(err), None, -32603)
        rpc = err.get("code")
        rpc_code = rpc if isinstance(rpc, int) and not isinstance(rpc, bool) else -32603
        data = err.get("data")
        code = data.get("code") if isinstance(data, dict) else None
        if not isinstance(code, str) or not code:
            code = _CODE_OF_RPC.get(rpc_code, str(rpc_code))
        return cls(code, str(err.get("message", "")), data, rpc_code)

    def __repr__(self) -> str:
        return f"HostError(code={self.code!r}, message={self.message!r})"


class ClientError(Exception):
    """Raise from an action to answer a client error of your choosing instead of a failure.

    ``raise ClientError("not_found", "no such image", status=404)`` reaches the caller as HTTP
    404 with ``{"error": {"code": "not_found", "message": "no such image"}}``. ``code`` is a
    machine-readable string, ``status`` a client status (400..=499; the host answers 401 and
    403 as 400, since those are reserved for its own authentication).
    """

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        if not isinstance(code, str) or not code:
            raise ValueError("`ClientError` needs a non-empty string `code`")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
            raise ValueError(f"`status` must be a client error status (400..=499), not {status!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"ClientError({self.code!r}, {self.message!r}, status={self.status})"


class Retry(Exception):
    """Raise from a task handler (``@plugin.task``) to have the host run the task again later.

    The host retries with backoff until the task's ``max_attempts`` (``ctx.attempt`` counts the
    runs); then the task fails with this message. Any exception with an attribute
    ``retryable = True`` is treated the same way. Outside a task it is an ordinary failure.
    """

    retryable = True
    code = "retry"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"Retry({self.message!r})"


def _check_str(what: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError(f"`{what}` must be a string, not {type(value).__name__}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass
class NotificationAction:
    """A follow-up the user may run from a notification: the action ``action`` of the same
    plugin with ``payload``, shown as ``label``."""

    action: str
    label: Optional[str] = None
    payload: Any = None

    def __post_init__(self) -> None:
        _check_str("NotificationAction.action", self.action, optional=False)
        _check_str("NotificationAction.label", self.label)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"action": self.action}
        if self.label is not None:
            out["label"] = self.label
        if self.payload is not None:
            out["payload"] = self.payload
        return out


@dataclasses.dataclass
class Notification:
    """A message shown to the user beside an action's result.

    ``level`` is one of ``info``, ``success``, ``warning``, ``error`` (case-insensitive on
    input); ``data`` is any JSON value; ``actions`` are suggested follow-ups
    (`NotificationAction`, or dicts of the same shape).
    """

    level: str = "info"
    title: Optional[str] = None
    message: str = ""
    data: Any = None
    actions: Optional[Sequence[Union[NotificationAction, Mapping[str, Any]]]] = None

    def __post_init__(self) -> None:
        level = str(getattr(self.level, "value", self.level)).lower()
        if level not in LEVELS:
            raise ValueError(f"Unknown notification level `{self.level}`; hint: use one of "
                             + ", ".join(LEVELS))
        self.level = level
        _check_str("Notification.title", self.title)
        _check_str("Notification.message", self.message, optional=False)
        if self.actions is not None:
            self.actions = [a if isinstance(a, NotificationAction) else NotificationAction(**a)
                            for a in self.actions]

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"level": self.level}
        if self.title is not None:
            out["title"] = self.title
        out["message"] = self.message
        if self.data is not None:
            out["data"] = self.data
        if self.actions:
            out["actions"] = [a.to_json() for a in self.actions]  # type: ignore[union-attr]
        return out


@dataclasses.dataclass
class Group:
    """A named group of result members (ids, keys, paths: any JSON values), with an optional
    ``id`` or ``key`` to refer to it, an overall ``score`` and named ``scores``."""

    name: str
    members: Sequence[Any] = ()
    id: Optional[str] = None
    key: Optional[str] = None
    score: Optional[float] = None
    scores: Optional[Mapping[str, float]] = None

    def __post_init__(self) -> None:
        _check_str("Group.name", self.name, optional=False)
        _check_str("Group.id", self.id)
        _check_str("Group.key", self.key)
        if isinstance(self.members, (str, bytes, Mapping)):
            raise ValueError("`Group.members` must be a list of members")
        self.members = list(self.members)
        if self.score is not None and not _is_number(self.score):
            raise ValueError(f"`Group.score` must be a number, not {self.score!r}")
        if self.scores is not None:
            for k, v in self.scores.items():
                if not isinstance(k, str) or not _is_number(v):
                    raise ValueError(f"`Group.scores` maps names to numbers, not {k!r}: {v!r}")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.key is not None:
            out["key"] = self.key
        out["name"] = self.name
        out["members"] = list(self.members)
        if self.score is not None:
            out["score"] = self.score
        if self.scores is not None:
            out["scores"] = dict(self.scores)
        return out


_KNOWN_FIELDS = ("value", "notifications", "groups")


@dataclasses.dataclass
class ActionResult:
    """The full result of an action: a value plus optional notifications and groups.

    Returning a plain value ``v`` from a handler is the same as returning
    ``ActionResult(value=v)``. ``extra`` holds other top-level fields (e.g. ``urls``), which the
    host passes through untouched.
    """

    value: Any = None
    notifications: List[Union[Notification, Mapping[str, Any]]] = dataclasses.field(
        default_factory=list)
    groups: List[Union[Group, Mapping[str, Any]]] = dataclasses.field(default_factory=list)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = [k for k in self.extra if k in _KNOWN_FIELDS]
        if clash:
            raise ValueError(f"`ActionResult.extra` cannot hold `{clash[0]}`; hint: use the "
                             "field of that name")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"value": self.value}
        if self.notifications:
            out["notifications"] = [
                n.to_json() if isinstance(n, Notification) else n for n in self.notifications
            ]
        if self.groups:
            out["groups"] = [g.to_json() if isinstance(g, Group) else g for g in self.groups]
        out.update(self.extra)
        return out

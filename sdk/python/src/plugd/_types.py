"""Result types an action may return, and the errors the SDK raises."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = [
    "ActionResult",
    "ClientError",
    "Group",
    "HostError",
    "Notification",
    "Score",
]

_NOTIFICATION_TYPES = ("DEBUG", "INFO", "WARNING", "ERROR")


class HostError(Exception):
    """The host answered a request from the plugin with a JSON-RPC error.

    ``code`` is the JSON-RPC error code (``-32020`` when a service is not granted or not
    available), ``message`` the host's message and ``data`` its optional extra data.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

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


@dataclasses.dataclass
class Notification:
    """A message shown to the user beside an action's result.

    ``type`` is one of ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` (case-insensitive on input).
    ``data`` is any JSON value, displayed as JSON.
    """

    type: str = "INFO"
    name: str = ""
    message: str = ""
    data: Any = None

    def __post_init__(self) -> None:
        t = str(getattr(self.type, "value", self.type)).upper()
        if t not in _NOTIFICATION_TYPES:
            raise ValueError(
                f"Unknown notification type `{self.type}`; hint: use one of "
                + ", ".join(_NOTIFICATION_TYPES)
            )
        self.type = t

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": self.type, "name": self.name, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclasses.dataclass
class Score:
    """A score attached to a group or to one item of a group."""

    value: float
    min: Optional[float] = None
    max: Optional[float] = None
    description: Optional[str] = None
    max_is_best: Optional[bool] = None

    def to_json(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


def _score_json(s: Any) -> Any:
    return s.to_json() if isinstance(s, Score) else s


@dataclasses.dataclass
class Group:
    """A group of items to display: either instance ``ids`` or image ``sha1s``, not both."""

    ids: Optional[Sequence[int]] = None
    sha1s: Optional[Sequence[str]] = None
    name: Optional[str] = None
    score: Union[Score, float, None] = None
    scores: Optional[Sequence[Union[Score, float]]] = None

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.sha1s is None):
            raise ValueError("A `Group` needs exactly one of `ids` and `sha1s`")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.ids is not None:
            out["ids"] = list(self.ids)
        else:
            out["sha1s"] = list(self.sha1s or ())
        if self.name is not None:
            out["name"] = self.name
        if self.score is not None:
            out["score"] = _score_json(self.score)
        if self.scores is not None:
            out["scores"] = [_score_json(s) for s in self.scores]
        return out


@dataclasses.dataclass
class ActionResult:
    """The full result of an action: a value plus optional notifications and groups.

    Returning a plain value ``v`` from a handler is the same as returning
    ``ActionResult(value=v)``.
    """

    value: Any = None
    notifications: List[Notification] = dataclasses.field(default_factory=list)
    groups: List[Group] = dataclasses.field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"value": self.value}
        if self.notifications:
            out["notifications"] = [
                n.to_json() if isinstance(n, Notification) else n for n in self.notifications
            ]
        if self.groups:
            out["groups"] = [g.to_json() if isinstance(g, Group) else g for g in self.groups]
        return out

"""In-process tests of the pieces that need no child: validation, result types, registration."""

import dataclasses
import enum
from typing import Dict, List, Literal, Optional, Tuple, Union

import pytest

from plugd import (ActionResult, Group, Notification, NotificationAction, Plugin,
                   ValidationFailed)
from plugd._validate import make_validator


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Size:
    w: int
    h: int


@dataclasses.dataclass
class Model:
    name: str
    size: Size
    ratio: float = 1.0
    color: Color = Color.RED
    mode: Literal["fit", "fill"] = "fit"
    tags: List[str] = dataclasses.field(default_factory=list)
    extra: Dict[str, int] = dataclasses.field(default_factory=dict)
    pair: Optional[Tuple[int, str]] = None
    either: Union[int, str] = 0
    flag: bool = False


def check(payload, expect):
    """`expect` is the model instance, or the list of (loc, type) errors."""
    v = make_validator(Model)
    if isinstance(expect, list):
        with pytest.raises(ValidationFailed) as info:
            v(payload)
        assert [(e["loc"], e["type"]) for e in info.value.errors] == expect
    else:
        assert v(payload) == expect


def test_dataclass_validation():
    check({"name": "a", "size": {"w": 1, "h": 2}}, Model("a", Size(1, 2)))
    check({"name": "a", "size": {"w": 1, "h": 2}, "ratio": 2, "color": "blue", "mode": "fill",
           "tags": ["x"], "extra": {"k": 1}, "pair": [1, "b"], "either": "s", "flag": True},
          Model("a", Size(1, 2), 2.0, Color.BLUE, "fill", ["x"], {"k": 1}, (1, "b"), "s", True))
    check({"name": "a", "size": {"w": 1.0, "h": 2}}, Model("a", Size(1, 2)))  # 1.0 is an int
    check({}, [(["name"], "missing"), (["size"], "missing")])
    check({"name": "a", "size": {"w": "1"}}, [(["size", "w"], "int_type"), (["size", "h"], "missing")])
    check({"name": "a", "size": {"w": 1, "h": 2}, "color": "green"}, [(["color"], "enum")])
    check({"name": "a", "size": {"w": 1, "h": 2}, "mode": "x"}, [(["mode"], "literal_error")])
    check({"name": "a", "size": {"w": 1, "h": 2}, "extra": {"k": "v"}}, [(["extra", "k"], "int_type")])
    check({"name": "a", "size": {"w": 1, "h": 2}, "pair": [1]}, [(["pair"], "union_type")])
    check({"name": "a", "size": {"w": 1, "h": 2}, "either": 1.5}, [(["either"], "union_type")])
    check({"name": "a", "size": {"w": 1, "h": 2}, "flag": 1}, [(["flag"], "bool_type")])
    check({"name": "a", "size": {"w": 1, "h": 2}, "ratio": True}, [(["ratio"], "float_type")])
    check([], [([], "dict_type")])


def test_post_init_errors_are_validation_errors():
    @dataclasses.dataclass
    class Positive:
        n: int

        def __post_init__(self):
            if self.n < 1:
                raise ValueError("`n` must be positive")

    with pytest.raises(ValidationFailed) as info:
        make_validator(Positive)({"n": 0})
    assert info.value.errors == [{"loc": [], "msg": "`n` must be positive", "type": "value_error"}]


def test_unsupported_input_model():
    with pytest.raises(TypeError, match="dataclass or a pydantic model"):
        make_validator(dict)


def test_pydantic_model_if_installed():
    pydantic = pytest.importorskip("pydantic")

    class P(pydantic.BaseModel):
        name: str

    v = make_validator(P)
    assert v({"name": "a"}).name == "a"
    with pytest.raises(ValidationFailed) as info:
        v({})
    assert info.value.errors[0]["loc"] == ["name"]


def test_result_types():
    r = ActionResult(
        value=1,
        notifications=[Notification("ERROR", "n", "m"),
                       Notification(message="plain"),
                       Notification("success", message="ok", data=[1],
                                    actions=[NotificationAction("undo", "Undo", {"c": 1}),
                                             {"action": "again"}])],
        groups=[Group("a", ("x", "y"), id="1", score=1, scores={"s": 0.5}), Group("b")],
        extra={"urls": ["u"]})
    assert r.to_json() == {
        "value": 1,
        "notifications": [
            {"level": "error", "title": "n", "message": "m"},
            {"level": "info", "message": "plain"},
            {"level": "success", "message": "ok", "data": [1],
             "actions": [{"action": "undo", "label": "Undo", "payload": {"c": 1}},
                         {"action": "again"}]},
        ],
        "groups": [{"id": "1", "name": "a", "members": ["x", "y"], "score": 1,
                    "scores": {"s": 0.5}},
                   {"name": "b", "members": []}],
        "urls": ["u"],
    }
    assert ActionResult().to_json() == {"value": None}


@pytest.mark.parametrize("make, message", [
    (lambda: Notification("LOUD"), "Unknown notification level `LOUD`; hint: use one of "
                                   "info, success, warning, error"),
    (lambda: Notification("debug", message="m"), "Unknown notification level `debug`"),
    (lambda: Notification(message=3), "`Notification.message` must be a string, not int"),
    (lambda: Notification(actions=[{"label": "x"}]), "missing 1 required positional argument"),
    (lambda: NotificationAction(7), "`NotificationAction.action` must be a string, not int"),
    (lambda: Group(None), "`Group.name` must be a string, not NoneType"),
    (lambda: Group("g", "abc"), "`Group.members` must be a list of members"),
    (lambda: Group("g", score=True), "`Group.score` must be a number, not True"),
    (lambda: Group("g", scores={"a": "1"}), "`Group.scores` maps names to numbers, not 'a': '1'"),
    (lambda: ActionResult(extra={"groups": []}), "`ActionResult.extra` cannot hold `groups`"),
])
def test_result_types_refuse_what_breaks_the_shape(make, message):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert message in str(info.value)


def test_registration_checks():
    p = Plugin()

    @p.action
    async def plain(payload):
        """One line.

        Not this."""

    assert p.actions == [{"name": "plain", "description": "One line."}]
    with pytest.raises(ValueError, match="Invalid action name `Bad`"):
        p.action(name="Bad")(lambda x: x)
    with pytest.raises(ValueError, match="registered twice"):
        p.action(name="plain")(lambda x: x)
    with pytest.raises(ValueError, match="Invalid topic pattern"):
        p.on_event("a*b")(lambda t, x: None)

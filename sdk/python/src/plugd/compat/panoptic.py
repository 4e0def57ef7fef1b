"""Runs an image-tool plugin written for Panoptic unchanged.

Config: ``{"format": "panoptic", "name": "my_plugin"}``.

The package root is a Python package whose ``__init__.py`` exports ``plugin_class``, a subclass
of ``APlugin``. Before it is imported, these modules are put in `sys.modules` under Panoptic's
names (nothing named `panoptic` exists on disk):

- ``panoptic.core.plugin.plugin``: `APlugin`
- ``panoptic.models``: `ActionContext`
- ``panoptic.models.results``: `ActionResult`, `Group`, `Notif`, `NotifType`, `NotifFunction`,
  `Score`, `ScoreList`
- ``panoptic.core.task.task``: `Task`

The package is imported through the shadow root (see `plugd.compat._common`) and created as
``plugin_class(project=..., plugin_path=SHADOW_ROOT, name=NAME)``, as Panoptic does; at start,
its params are loaded and ``_start()`` is awaited.

- **Params**: when ``self.params`` is a pydantic (v2) model instance, the plugd params are
  loaded into it at start and on every change:
  ``type(model).model_validate({**model.model_dump(), **plugin.params})``.
- **Data**: ``self.data_path`` is the shadow ``data`` folder, i.e. the plugin's data dir.
- **Project**: ``self.project`` is a `Project`: tasks (``add_task``, ``run_async``) and an
  undo history (``do``, ``undo``, ``redo``) on plugd's services; Panoptic's project database
  (instances, properties, tags, vectors, ...) does not exist in plugd, and any other
  ``project.X`` raises `NotImplementedError`.
- **Actions**: each function registered with ``add_action_easy`` or ``add_action`` is an action
  named after the function. The payload ``{"context": {"instance_ids": [...], "group_name":
  ..., "ui_inputs": {...}}, ...params}`` calls ``fn(ActionContext(...), **params)`` (parameters
  annotated with an `Enum` or a `pathlib.Path` are converted). Its result (an `ActionResult`,
  or any value) is answered as JSON: dataclasses as objects without their ``None`` fields,
  enums as their values. The action ``panoptic.describe`` answers the plugin's description:
  ``{"name", "description", "params", "functions"}``, ``functions`` being
  ``registered_functions``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import importlib.util
import inspect
import pathlib
import re
import sys
import types
import typing
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Set,
                    Tuple)

from .._types import ClientError
from ._common import ConfigError, maybe_await, plugin_code, prepare_shadow

if TYPE_CHECKING:
    from .._plugin import Plugin, TaskId

__all__ = ["APlugin", "ActionContext", "ActionResult", "DESCRIBE_ACTION", "Group", "Notif",
           "NotifFunction", "NotifType", "Project", "Score", "ScoreList", "TASK",
           "Task", "UnsupportedProjectAPI", "describe_function", "load", "to_json"]

DESCRIBE_ACTION = "panoptic.describe"
# The plugd task that runs the `Task` objects given to `project.add_task`.
TASK = "panoptic.task"
# The module the plugin's package is imported as.
_PACKAGE = "panoptic_plugin"


# ---------------------------------------------------------------------------- panoptic.models


@dataclasses.dataclass
class ActionContext:
    """What an action is called on: the selected instances, their group, the UI's inputs."""

    instance_ids: Optional[List[int]] = None
    property_ids: Optional[List[int]] = None
    group_name: Optional[str] = None
    file: Optional[str] = None
    text: Optional[str] = None
    ui_inputs: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ScoreList:
    """One score per member of a `Group`."""

    values: List[float]
    min: float
    max: float
    description: str = ""
    max_is_best: bool = True


@dataclasses.dataclass
class Score:
    """The score of a whole `Group`."""

    value: float
    min: float
    max: float
    description: str = ""
    max_is_best: bool = True


@dataclasses.dataclass
class Group:
    """A group of instances (by ``ids``) or images (by ``sha1s``) an action proposes."""

    ids: Optional[List[int]] = None
    sha1s: Optional[List[str]] = None
    scores: Optional[ScoreList] = None
    score: Optional[Score] = None
    name: Optional[str] = None


class NotifType(enum.Enum):
    """The level of a `Notif`."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclasses.dataclass
class NotifFunction:
    """A follow-up action offered by a `Notif`: ``function`` called with ``context``."""

    function: Optional[str] = None
    context: Optional[ActionContext] = None
    message: Optional[str] = None


@dataclasses.dataclass
class Notif:
    """A message shown to the user beside an action's result."""

    type: Optional[NotifType] = None
    id: Optional[int] = None
    created_at: Optional[datetime.datetime] = None
    received_at: Optional[datetime.datetime] = None
    name: Optional[str] = None
    message: Optional[str] = None
    data: Any = None
    functions: Optional[List[NotifFunction]] = None
    read: Optional[bool] = None


@dataclasses.dataclass
class ActionResult:
    """What an action returns: groups, extra data, links, notifications and a value."""

    groups: Optional[List[Group]] = None
    datas: Optional[List[Dict[str, Any]]] = None
    urls: Optional[List[str]] = None
    notifs: Optional[List[Notif]] = None
    value: Any = None


def to_json(value: Any) -> Any:
    """``value`` as JSON data: dataclasses as objects without their ``None`` fields, enums as
    their values, paths and dates as strings, pydantic models dumped."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if callable(getattr(value, "model_dump", None)):  # pydantic v2
        return value.model_dump(mode="json")
    return value


# ---------------------------------------------------------------------------- panoptic.core.task


class Task:
    """Background work queued with ``project.add_task``: override ``async run()`` and, to run
    once after the last task with the same ``key``, ``async run_if_last()``.

    ``name`` and ``key`` default to the class name; ``priority=True`` runs it before the other
    queued tasks. It runs in this process as a plugd task (one attempt).
    """

    def __init__(self, priority: bool = False) -> None:
        self.has_priority = priority
        self.name = type(self).__name__
        self.key = type(self).__name__

    async def run(self) -> Any:
        """The task's work."""
        raise NotImplementedError(f"`{type(self).__name__}` must override `async run()`")

    async def run_if_last(self) -> None:
        """Called once after the last queued task with this ``key`` finished."""

    async def run_async(self, function: Callable[..., Any], *args: Any) -> Any:
        """Runs the blocking ``function(*args)`` in a thread and returns its result."""
        return await asyncio.to_thread(function, *args)

    _async = run_async  # the older name


# ---------------------------------------------------------------------------- the project


class UnsupportedProjectAPI(NotImplementedError, AttributeError):
    """A part of Panoptic's project API that plugd does not have. Also an `AttributeError`, so
    ``hasattr(project, name)`` is False for it."""


class Project:
    """``self.project`` of a Panoptic plugin under plugd.

    - ``add_task(task)`` queues a `Task` as a plugd task (``key`` and priority kept); its
      ``run()`` runs in this process, and ``run_if_last()`` after the last task of its key.
      Called from async code it returns the asyncio Task doing the submit (await it for the
      `TaskId`), from a thread the `TaskId`.
    - ``await run_async(fn, *args)`` runs a blocking function in a thread.
    - ``await do(commit)`` applies ``{"puts": {key: value}, "deletes": [key]}`` to plugd's kv
      as one undoable commit and returns its id; ``await undo()`` / ``await redo()`` revert and
      re-apply the latest commit (id, or None when there is none).
    - ``plugd`` is the SDK `Plugin`, for anything else.

    Any other attribute (Panoptic's database methods) raises `UnsupportedProjectAPI`, a
    `NotImplementedError`.
    """

    def __init__(self, plugd: "Plugin") -> None:
        self.plugd = plugd
        self._tasks: Dict[int, Any] = {}  # submitted, not yet run: ref -> Task
        self._last: Dict[str, Any] = {}  # key -> the last Task of that key that ran
        self._after_last: Set[str] = set()  # keys with an `after_last` hook
        self._submitting: Set["asyncio.Task[Any]"] = set()
        self._next_ref = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnsupportedProjectAPI(f"Panoptic's project database API (project.{name}) is not "
                                    "available in plugd; see docs/migrating.md")

    def add_task(self, task: Any) -> Any:
        """Queues ``task`` (see the class docstring)."""
        if not callable(getattr(task, "run", None)):
            raise TypeError(f"`add_task` takes a Task with `async run()`, not "
                            f"{type(task).__name__}")
        self._next_ref += 1
        ref = self._next_ref
        self._tasks[ref] = task
        key = getattr(task, "key", None)
        key = str(key) if key not in (None, "") else None
        if key is not None and key not in self._after_last:
            self._after_last.add(key)
            self.plugd.after_last(key)(self._run_if_last)
        payload = {"ref": ref, "name": str(getattr(task, "name", type(task).__name__))}
        # One attempt, as in Panoptic's queue (and a retry would find the object gone).
        options: Dict[str, Any] = {"key": key, "max_attempts": 1,
                                   "priority": bool(getattr(task, "has_priority", False))}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: wait for the host's answer
            return self.plugd.submit_sync(TASK, payload, **options)
        submitting = loop.create_task(self.plugd.submit(TASK, payload, **options))
        self._submitting.add(submitting)
        submitting.add_done_callback(lambda t: self._submitted(ref, payload["name"], t))
        return submitting

    def _submitted(self, ref: int, name: str, submitting: "asyncio.Task[TaskId]") -> None:
        self._submitting.discard(submitting)
        exc = None if submitting.cancelled() else submitting.exception()
        if submitting.cancelled() or exc is not None:
            self._tasks.pop(ref, None)
            self.plugd.log.error("Could not queue task `%s`: %s", name,
                                 exc if exc is not None else "cancelled")

    async def _run_task(self, payload: Any) -> None:
        """The plugd task `TASK`: runs the `Task` object ``payload["ref"]`` names."""
        ref = payload.get("ref") if isinstance(payload, dict) else None
        task = self._tasks.pop(ref, None) if isinstance(ref, int) else None
        if task is None:
            raise LookupError(f"Task {payload!r} was queued by an earlier process of this plugin; "
                              "Panoptic tasks are Python objects and run only in the process "
                              "that queued them: queue it again")
        await maybe_await(task.run())
        key = getattr(task, "key", None)
        if key not in (None, ""):
            self._last[str(key)] = task

    async def _run_if_last(self, key: str) -> None:
        task = self._last.pop(key, None)
        if task is not None and callable(getattr(task, "run_if_last", None)):
            await maybe_await(task.run_if_last())

    async def run_async(self, function: Callable[..., Any], *args: Any) -> Any:
        """Runs the blocking ``function(*args)`` in a thread and returns its result."""
        return await asyncio.to_thread(function, *args)

    async def do(self, commit: Mapping[str, Any]) -> int:
        """Applies ``{"puts": {...}, "deletes": [...]}`` as one undoable kv commit; returns its
        id."""
        if not isinstance(commit, Mapping):
            raise TypeError(f"`project.do` takes a dict {{\"puts\": {{...}}, \"deletes\": [...]}} "
                            f"in plugd, not {type(commit).__name__}; Panoptic's DbCommit "
                            "(database rows) is not available; see docs/migrating.md")
        unknown = sorted(set(commit) - {"puts", "deletes"})
        if unknown:
            raise ValueError(f"`project.do` got unknown keys {', '.join(unknown)}; a commit has "
                             "`puts` (key -> value) and `deletes` (keys)")
        return await self.plugd.kv.commit(commit.get("puts") or {}, commit.get("deletes") or [])

    async def undo(self) -> Optional[int]:
        """Reverts the latest commit; its id, or None when there is nothing to undo."""
        return await self.plugd.kv.undo()

    async def redo(self) -> Optional[int]:
        """Re-applies the latest undone commit; its id, or None when there is none."""
        return await self.plugd.kv.redo()


# ---------------------------------------------------------------------------- actions

# Annotations a parameter may have to appear in the derived schema (as Panoptic's
# `possible_inputs`), by type and by name for unresolvable string annotations.
_SCALARS: Dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}
_BY_NAME: Dict[str, Any] = {"bool": bool, "int": int, "float": float, "str": str,
                            "Path": pathlib.Path, "pathlib.Path": pathlib.Path}
_PARAM_DOC = re.compile(r"@(\w+):(.*?)(?=@\w+:|\Z)", re.S)


def _is_enum(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, enum.Enum)


def _is_path(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, pathlib.PurePath)


def _schema_of(annotation: Any) -> Optional[Dict[str, Any]]:
    """The JSON Schema of a parameter type, or None for a type Panoptic shows no input for."""
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if _is_enum(annotation):
        return {"enum": [to_json(member.value) for member in annotation]}
    if _is_path(annotation):
        return {"type": "string"}
    return None


class _Function:
    """A registered action: the function, and the parameters a payload may give it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.params, self.var_keyword, self.hints = _parameters(fn)

    def arguments(self, action: str, params: Dict[str, Any]) -> Dict[str, Any]:
        """The keyword arguments for ``params`` (converted), or `ClientError` ``bad_payload``."""
        names = {p.name: p for p in self.params}
        unknown = sorted(k for k in params if k not in names)
        if unknown and not self.var_keyword:
            raise ClientError("bad_payload", f"`{action}` has no parameter "
                              f"{', '.join(f'`{k}`' for k in unknown)}; it takes: "
                              f"{', '.join(names) or 'nothing but `context`'}")
        missing = [name for name, p in names.items() if p.default is p.empty and name not in params]
        if missing:
            raise ClientError("bad_payload", f"`{action}` needs "
                              f"{', '.join(f'`{k}`' for k in missing)} beside `context`")
        kwargs = dict(params)
        for name, value in params.items():
            annotation = self.hints.get(name)
            if _is_enum(annotation) and not isinstance(value, annotation):
                try:
                    kwargs[name] = annotation(value)
                except ValueError:
                    allowed = ", ".join(repr(m.value) for m in annotation)
                    raise ClientError("bad_payload", f"`{name}` of `{action}` is {value!r}, not "
                                      f"one of {allowed}") from None
            elif _is_path(annotation) and isinstance(value, str):
                kwargs[name] = annotation(value)
        return kwargs


def _parameters(fn: Callable[..., Any]) -> Tuple[List[inspect.Parameter], bool, Dict[str, Any]]:
    """The parameters of ``fn`` after its first (the context) that a payload can give, whether
    it takes ``**kwargs``, and the resolved annotations."""
    name = getattr(fn, "__name__", repr(fn))
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY,
                                            params[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"Action `{name}` must take the `ActionContext` as its first parameter")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a forward reference that does not resolve: read the names we know
        hints = {p.name: _BY_NAME.get(p.annotation, p.annotation) if isinstance(p.annotation, str)
                 else p.annotation for p in params}
    rest = params[1:]
    named = [p for p in rest if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in rest), hints


def describe_function(fn: Callable[..., Any], hooks: Optional[Sequence[str]] = None
                      ) -> Dict[str, Any]:
    """``{name, hooks, description, input}`` for an action, as Panoptic's ``add_action_easy``
    derives it: the name of the function; its docstring up to the first ``@`` as description;
    ``input`` the JSON Schema of its parameters after the context (those of type int, float,
    str, bool, an Enum or a pathlib.Path, with their defaults; those without one are
    required), each described by its docstring line ``@name: text``."""
    doc = inspect.getdoc(fn) or ""
    param_docs = {m.group(1): " ".join(m.group(2).split()) for m in _PARAM_DOC.finditer(doc)}
    params, _, hints = _parameters(fn)
    properties: Dict[str, Any] = {}
    required: List[str] = []
    for p in params:
        schema = _schema_of(hints.get(p.name, p.annotation))
        if schema is None:
            continue
        if p.default is p.empty:
            required.append(p.name)
        else:
            schema["default"] = to_json(p.default)
        if param_docs.get(p.name):
            schema["description"] = param_docs[p.name]
        properties[p.name] = schema
    schema_in: Dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema_in["required"] = required
    return {"name": fn.__name__, "hooks": list(hooks or []),
            "description": doc.split("@", 1)[0].strip(), "input": schema_in}


# ---------------------------------------------------------------------------- APlugin


class APlugin:
    """The base class of Panoptic plugins (``from panoptic.core.plugin.plugin import APlugin``).

    Set ``self.params`` to a pydantic model instance for settings, register actions with
    `add_action_easy` (or `add_action`), override ``async _start()`` for start-up work.
    """

    def __init__(self, name: str, project: Project, plugin_path: str) -> None:
        self.params: Any = None
        self.name = name
        self.project = project
        self._project = project
        self.path = plugin_path
        self.base_key = f"{name}.base"
        self.data_path = pathlib.Path(plugin_path) / "data"
        self.registered_functions: List[Dict[str, Any]] = []
        self._functions: Dict[str, _Function] = {}

    async def start(self) -> None:
        """Loads the params, then runs `_start` (called by the runner when plugd starts the
        plugin)."""
        self.load_params(self._project.plugd.params)
        await self._start()

    async def _start(self) -> None:
        """Start-up work of the plugin (override it)."""

    def load_params(self, values: Mapping[str, Any]) -> None:
        """Loads ``values`` into the pydantic model ``self.params`` (if it is one), over its
        current values."""
        model = self.params
        if callable(getattr(model, "model_dump", None)):
            self.params = type(model).model_validate({**model.model_dump(), **values})

    def add_action_easy(self, function: Callable[..., Any],
                        hooks: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Offers ``function`` (``async def f(context, ...)``) as the action of its name, its
        description derived from its signature and docstring (`describe_function`)."""
        return self._register(function, describe_function(function, hooks))

    def add_action(self, function: Callable[..., Any], description: Any) -> Dict[str, Any]:
        """Offers ``function`` with a given ``description``: a text, or a dict or object with
        ``name``, ``description`` and ``hooks`` (missing ones derived as in
        `add_action_easy`)."""
        described = describe_function(function)
        if isinstance(description, str):
            described["description"] = description
        else:
            for key in ("name", "description", "hooks"):
                value = (description.get(key) if isinstance(description, Mapping)
                         else getattr(description, key, None))
                if value is not None:
                    described[key] = list(value) if key == "hooks" else str(value)
        return self._register(function, described)

    def _register(self, function: Callable[..., Any], described: Dict[str, Any]
                  ) -> Dict[str, Any]:
        name = described["name"]
        if name in self._functions or name == DESCRIBE_ACTION:
            raise ValueError(f"Action `{name}` is registered twice")
        self._functions[name] = _Function(function)
        self.registered_functions.append(described)
        return described


# ---------------------------------------------------------------------------- the runner


def _module(name: str, doc: str, package: bool = False, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    if package:
        module.__path__ = []  # type: ignore[attr-defined]
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _install_panoptic_modules() -> None:
    """Puts Panoptic's module names in `sys.modules`, holding the classes of this module."""
    doc = "plugd's stand-in for Panoptic (plugd.compat.panoptic)"
    results = _module("panoptic.models.results", doc, ActionResult=ActionResult, Group=Group,
                      Notif=Notif, NotifType=NotifType, NotifFunction=NotifFunction,
                      Score=Score, ScoreList=ScoreList)
    models = _module("panoptic.models", doc, package=True, ActionContext=ActionContext,
                     results=results)
    task = _module("panoptic.core.task", doc, package=True,
                   task=_module("panoptic.core.task.task", doc, Task=Task))
    plugin = _module("panoptic.core.plugin", doc, package=True,
                     plugin=_module("panoptic.core.plugin.plugin", doc, APlugin=APlugin))
    core = _module("panoptic.core", doc, package=True, plugin=plugin, task=task)
    _module("panoptic", doc, package=True, core=core, models=models)


_CONTEXT_FIELDS = [f.name for f in dataclasses.fields(ActionContext)]


def _context(raw: Any, action: str) -> ActionContext:
    if raw is None:
        return ActionContext()
    if not isinstance(raw, dict):
        raise ClientError("bad_payload", f"`context` of `{action}` must be an object, not "
                          f"{type(raw).__name__}")
    unknown = sorted(k for k in raw if k not in _CONTEXT_FIELDS)
    if unknown:
        raise ClientError("bad_payload", f"`context` of `{action}` has unknown fields "
                          f"{', '.join(unknown)}; known: {', '.join(_CONTEXT_FIELDS)}")
    return ActionContext(**raw)


def describe(instance: APlugin) -> Dict[str, Any]:
    """What the action `DESCRIBE_ACTION` answers."""
    doc = type(instance).__doc__
    params = instance.params
    return {"name": instance.name, "description": inspect.cleandoc(doc) if doc else "",
            "params": to_json(params) if params is not None else None,
            "functions": instance.registered_functions}


def load(plugin: "Plugin", config: Mapping[str, Any]) -> None:
    """Imports the Panoptic plugin of the package and wires it to ``plugin``."""
    name: str = config["name"]
    shadow = prepare_shadow()
    init = shadow.root / "__init__.py"
    if not init.is_file():
        raise ConfigError("The package has no `__init__.py`; hint: a Panoptic plugin is a Python "
                          "package whose `__init__.py` exports `plugin_class`")
    _install_panoptic_modules()
    spec = importlib.util.spec_from_file_location(_PACKAGE, init,
                                                  submodule_search_locations=[str(shadow.root)])
    assert spec is not None and spec.loader is not None  # a `.py` file always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = module
    with plugin_code("Importing the package (`__init__.py`)"):
        spec.loader.exec_module(module)
    cls = getattr(module, "plugin_class", None)
    if not (inspect.isclass(cls) and issubclass(cls, APlugin)):
        got = ("no `plugin_class`" if cls is None else f"class `{cls.__name__}`"
               if inspect.isclass(cls) else f"a {type(cls).__name__}")
        raise ConfigError("`__init__.py` must export `plugin_class`, a subclass of `APlugin` "
                          f"(from panoptic.core.plugin.plugin); it exports {got}")
    project = Project(plugin)
    with plugin_code(f"Creating `{cls.__name__}`"):
        instance = cls(project=project, plugin_path=str(shadow.root), name=name)

    @plugin.on_start
    async def start() -> None:
        await instance.start()

    @plugin.on_params_changed
    async def params_changed(params: Dict[str, Any]) -> None:
        instance.load_params(params)

    plugin.task(TASK)(project._run_task)

    async def dispatch(action: str, payload: Any) -> Any:
        if action == DESCRIBE_ACTION:
            return describe(instance)
        function = instance._functions.get(action)
        if function is None:
            available = ", ".join(sorted(instance._functions)) or "none"
            raise ClientError("unknown_action", f"No action `{action}`; available: {available}",
                              status=404)
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise ClientError("bad_payload", f"The payload of `{action}` must be an object "
                              "{\"context\": {...}, ...parameters}")
        params = dict(payload)
        context = _context(params.pop("context", None), action)
        kwargs = function.arguments(action, params)
        return to_json(await maybe_await(function.fn(context, **kwargs)))

    plugin.fallback(dispatch, eager=False)

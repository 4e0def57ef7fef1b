"""Actions that exercise `plugd.compat.panoptic`: tasks, undo/redo, typed parameters and the
project API plugd does not have."""

import threading
from enum import Enum
from pathlib import Path

from panoptic.core.plugin.plugin import APlugin
from panoptic.core.task.task import Task
from panoptic.models import ActionContext
from panoptic.models.results import ActionResult, Notif, NotifFunction, NotifType


class Mode(Enum):
    FAST = "fast"
    SLOW = "slow"


def thread_name():
    return threading.current_thread().name


class ProbeTask(Task):
    def __init__(self, log, number):
        super().__init__(priority=number == 0)
        self.log = log
        self.number = number
        self.key = "probe"
        self.name = f"probe {number}"

    async def run(self):
        worker = await self.run_async(thread_name)
        self.log.append(f"run {self.number} (blocking part in another thread: "
                        f"{worker != thread_name()})")

    async def run_if_last(self):
        self.log.append(f"last after {self.number}")


class ProbePlugin(APlugin):
    def __init__(self, project, plugin_path, name):
        super().__init__(name=name, project=project, plugin_path=plugin_path)
        self.log = []
        for fn in (self.queue, self.state, self.change, self.undo, self.redo, self.instances,
                   self.typed, self.kwargs, self.sync):
            self.add_action_easy(fn)
        self.add_action(self.custom, {"name": "custom", "description": "Given by hand",
                                      "hooks": ["execute"]})

    async def _start(self):
        self.log.append(f"started with data at {self.data_path.name}")

    async def queue(self, context: ActionContext, count: int = 2):
        """Queues `count` tasks with the key `probe`."""
        for number in range(count):
            self.project.add_task(ProbeTask(self.log, number))
        return count

    async def state(self, context: ActionContext):
        return {"log": self.log, "has_db": hasattr(self.project, "get_instances"),
                "data_file": (self.data_path / "probe.txt").exists()}

    async def change(self, context: ActionContext, commit: dict):
        return await self.project.do(commit)

    async def undo(self, context: ActionContext):
        return await self.project.undo()

    async def redo(self, context: ActionContext):
        return await self.project.redo()

    async def instances(self, context: ActionContext):
        return await self.project.get_instances(ids=context.instance_ids)

    async def typed(self, context: ActionContext, mode: Mode, folder: Path = Path("in"),
                    flag: bool = False, ratio: float = 1.5, tags: list = None):
        """Shows how each parameter arrives.

        @mode: how fast
        @folder: where to look
        """
        (self.data_path / "probe.txt").write_text(str(folder))
        return ActionResult(value={"mode": mode, "folder": folder, "flag": flag, "ratio": ratio,
                                   "types": [type(mode).__name__, type(folder).__name__]},
                            notifs=[Notif(type=NotifType.WARNING, message="typed",
                                          functions=[NotifFunction(
                                              function="probe.typed",
                                              context=ActionContext(instance_ids=[1]))])])

    async def kwargs(self, context: ActionContext, **extra):
        return {"extra": extra, "group": context.group_name, "ui": context.ui_inputs}

    def sync(self, context: ActionContext, x: int = 1):
        return x * 2

    async def custom(self, context: ActionContext):
        return "custom"

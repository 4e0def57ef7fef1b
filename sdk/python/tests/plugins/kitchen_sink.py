"""A test plugin exercising every SDK feature; driven by `tests/test_plugin.py`."""

import asyncio
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import List, Optional

from plugd import ActionResult, Group, HostError, Notification, Plugin

plugin = Plugin()


@dataclass
class GreetInput:
    name: str
    times: int = 1
    tags: List[str] = field(default_factory=list)
    title: Optional[str] = None


@plugin.action(description="Greets someone", input=GreetInput)
async def greet(req: GreetInput):
    assert isinstance(req, GreetInput)
    who = f"{req.title} {req.name}" if req.title else req.name
    return {"message": " ".join([f"Hello, {who}!"] * req.times), "tags": req.tags}


@plugin.action()
async def echo(payload):
    """Returns the payload.

    More text that is not part of the description.
    """
    return payload


@plugin.action()
async def sleep(payload):
    await asyncio.sleep(payload["s"])
    return payload["i"]


@plugin.action()
async def fail(payload):
    raise ValueError("boom")


@plugin.action(name="fail.later")
async def fail_later(payload):
    await asyncio.sleep(0.01)
    raise KeyError("later")


class CodedError(Exception):
    code = "E_QUOTA"


@plugin.action()
async def coded(payload):
    raise CodedError("quota exceeded")


@plugin.action()
def sync_thread(payload):
    return {"thread": threading.current_thread().name,
            "main": threading.current_thread() is threading.main_thread()}


@plugin.action()
def sync_sleep(payload):
    import time
    time.sleep(payload)
    return "slept"


@plugin.action()
def sync_fail(payload):
    raise RuntimeError("sync boom")


@plugin.action()
async def rich(payload):
    return ActionResult(
        value={"n": 1},
        notifications=[Notification("warning", "Careful", "It is hot", data={"t": 40})],
        groups=[Group("pair", [1, 2], id="g", score=0.5),
                Group("rest", ["ab"], key="k", scores={"size": 0.1})],
    )


@plugin.action()
async def plain_result(payload):
    return ActionResult(value=[1, 2])


@plugin.action()
async def printer(payload):
    print("x" * 70000)
    print('{"jsonrpc":"2.0","id":1,"result":"fake"}')
    await asyncio.sleep(0.01)
    print("after", flush=True)
    sys.stderr.write("to stderr\n")
    return "printed"


@plugin.action()
async def progress(payload):
    plugin.progress(0.5, "half")
    await asyncio.sleep(0.01)
    plugin.progress(fraction=1.0, message="done")
    return "ok"


@plugin.action()
def sync_progress(payload):
    plugin.progress(0.25, "quarter")
    return "ok"


@plugin.action()
async def logme(payload):
    plugin.log.warning("careful %s", payload)
    logging.info("root info")
    logging.getLogger("lib.sub").debug("a debug line")
    return None


@plugin.action()
async def ask_host(payload):
    try:
        return {"ok": await plugin.request(payload["method"], payload.get("params"))}
    except HostError as exc:
        return {"code": exc.code, "message": exc.message}


@plugin.action()
def ask_host_sync(payload):
    return {"ok": plugin.request_sync(payload["method"], payload.get("params"), timeout=5)}


@plugin.action()
async def slow(payload):
    plugin.progress(message="started")  # tests wait for this instead of sleeping
    try:
        await asyncio.sleep(payload.get("s", 10))
    except asyncio.CancelledError:
        plugin.emit("cancelled", {"tag": payload.get("tag")})
        raise
    return "finished"


@plugin.action()
async def on_host(payload):
    """Awaits `asks` host requests `test.ask` in turn (the test answers them, or never does),
    with a short sleep after each when `sleep`; returns the answers, reports a cancellation."""
    plugin.progress(message="started")
    answers = []
    try:
        for _ in range(payload.get("asks", 1)):
            answers.append(await plugin.request("test.ask", {"tag": payload["tag"]}))
            if payload.get("sleep"):
                await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        plugin.emit("cancelled", {"tag": payload["tag"]})
        raise
    return answers


_gates = {}


def _gate(key):
    return _gates.setdefault(key, asyncio.Event())


@plugin.action()
async def gate(payload):
    """Waits until `open_gate` opens the gate with this key; answers the key."""
    await _gate(payload).wait()
    return payload


@plugin.action()
async def open_gate(payload):
    _gate(payload).set()
    return None


@plugin.action()
async def lookup(payload):
    from plugd import ClientError
    raise ClientError("not_found", f"no such image: {payload}", status=404)


@plugin.action()
async def announce(payload):
    try:
        await plugin.emit(payload["topic"], payload.get("payload"))
    except HostError as exc:
        return {"refused": exc.code, "message": exc.message}
    return {"emitted": payload["topic"]}


@plugin.action()
def announce_sync(payload):
    try:
        plugin.emit(payload["topic"], payload.get("payload"))
    except HostError as exc:
        return {"refused": exc.code}
    return {"emitted": payload["topic"]}


@plugin.action()
async def current_task(payload):
    # Runs before any suspension: the handler must be inside a real Task on 3.12+.
    task = asyncio.current_task()
    await asyncio.sleep(0)
    return {"before": task is not None, "after": asyncio.current_task() is not None}


@plugin.action()
async def taskgroup(payload):
    async with asyncio.TaskGroup() as tg:
        a = tg.create_task(asyncio.sleep(0.001, result=1))
        b = tg.create_task(asyncio.sleep(0.002, result=2))
    return a.result() + b.result()


@plugin.action(eager=False)
async def lazy(payload):
    return asyncio.current_task() is not None


@plugin.action()
async def multi_progress(payload):
    for i in range(3):
        plugin.progress(i / 3, str(payload))
        await asyncio.sleep(0.001 * (payload % 3))
    return payload


@plugin.action()
async def yield_once(payload):
    await asyncio.sleep(0)
    return "yielded"


@plugin.action()
async def raise_cancel(payload):
    raise asyncio.CancelledError()


@plugin.action()
async def not_json(payload):
    return {"x": object()}


@plugin.action()
async def info(payload):
    return {"name": plugin.name, "version": plugin.version, "params": plugin.params,
            "data_dir": str(plugin.data_dir), "services": plugin.services,
            "workers": plugin._max_workers, "cwd": os.getcwd(), "limits": plugin.limits}


@plugin.on_event("image.*")
async def on_image(topic, payload):
    plugin.emit("seen", {"topic": topic, "by": "prefix", "payload": payload})


@plugin.on_event("image.imported")
def on_imported(topic, payload):
    plugin.emit("seen", {"topic": topic, "by": "exact"})


@plugin.on_event("boom")
async def on_boom(topic, payload):
    raise RuntimeError("event boom")


@plugin.on_params_changed
async def params_changed(params):
    plugin.emit("params", {"params": params, "seen": plugin.params})


if __name__ == "__main__":
    plugin.run()

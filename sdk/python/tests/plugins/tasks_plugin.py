"""A plugin with durable events, background tasks and an after-last hook; driven by
`tests/test_tasks.py`."""

import asyncio
import threading
from dataclasses import dataclass

from plugd import ClientError, HostError, Plugin, Retry

plugin = Plugin()
seen = []  # (handler, topic, payload) of every event handled, in order
_gates = {}


def _gate(key):
    return _gates.setdefault(key, asyncio.Event())


# -- events


@plugin.on_event("image.*")
async def on_image(topic, payload):
    seen.append(["async", topic, payload])


@plugin.on_event("image.imported")
def on_imported(topic, payload):
    seen.append(["sync", topic, payload])


@plugin.on_event("held")
async def on_held(topic, payload):
    await _gate(payload).wait()
    seen.append(["held", topic, payload])


class CodedError(Exception):
    code = "E_DISK"


@plugin.on_event("bad.*")
async def on_bad(topic, payload):
    if topic == "bad.coded":
        raise CodedError("disk full")
    raise ValueError(f"cannot handle {payload}")


@plugin.on_event("bad.sync")
def on_bad_sync(topic, payload):
    seen.append(["sync-ok", topic, payload])


@plugin.action()
async def state(payload):
    return {"seen": seen}


@plugin.action()
async def open_gate(payload):
    _gate(payload).set()
    return None


# -- tasks


@plugin.task("embed")
async def embed(payload, ctx):
    ctx.progress(0.5, "half")
    await asyncio.sleep(0)
    ctx.progress(1.0)
    return {"payload": payload, "id": ctx.id, "task": ctx.task, "key": ctx.key,
            "attempt": ctx.attempt, "cancelled": ctx.cancelled,
            "has_deadline": ctx.deadline is not None}


@plugin.task("embed.sync")
def embed_sync(payload, ctx):
    ctx.progress(0.25, "quarter")
    return {"payload": payload, "id": ctx.id, "thread": threading.current_thread().name}


@plugin.task
async def payload_only(payload):
    return payload


@dataclass
class Size:
    w: int
    h: int


@plugin.task("area", input=Size)
def area(size: Size):
    return size.w * size.h


@plugin.task("flaky")
async def flaky(payload, ctx):
    raise Retry(f"try again (attempt {ctx.attempt})")


class Busy(Exception):
    retryable = True


@plugin.task("busy")
def busy(payload, ctx):
    raise Busy("the GPU is busy")


@plugin.task("broken")
async def broken(payload, ctx):
    if payload == "coded":
        raise CodedError("disk full")
    if payload == "client":
        raise ClientError("not_found", "no such image", status=404)
    raise ValueError("bad input")


@plugin.task("not_json")
async def not_json(payload, ctx):
    return {"x": object()}


@plugin.task("wait")
async def wait(payload, ctx):
    ctx.progress(message="started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        # A log line, not an `emit` (a request the fake host might answer after the exit).
        plugin.log.info("task %s stopped, cancelled=%s", ctx.id, ctx.cancelled)
        raise
    return "finished"


@plugin.task("wait.sync")
def wait_sync(payload, ctx):
    ctx.progress(message="started")
    if not ctx.wait_cancelled(30):
        return "not cancelled"
    if payload == "raise":
        raise RuntimeError("stopped early")
    return {"stopped_at": "step 3", "cancelled": ctx.cancelled}


@plugin.after_last("index")
async def rebuild(key, ctx):
    ctx.progress(1.0, "rebuilt")
    return {"rebuilt": key, "task": ctx.task, "key": ctx.key, "attempt": ctx.attempt}


@plugin.after_last("thumbs")
def thumbs_done(key):
    return f"sync hook for {key}"


# -- submit


@plugin.action()
async def submit(payload):
    try:
        tid = await plugin.submit(payload["task"], payload.get("payload"),
                                  **payload.get("options", {}))
    except HostError as exc:
        return {"code": exc.code, "message": exc.message}
    return {"id": tid, "is_int": isinstance(tid, int), "deduped": tid.deduped, "via": tid.id}


@plugin.action()
def submit_sync(payload):
    tid = plugin.submit_sync(payload["task"], payload.get("payload"),
                             **payload.get("options", {}))
    return {"id": tid, "deduped": tid.deduped}


if __name__ == "__main__":
    plugin.run()

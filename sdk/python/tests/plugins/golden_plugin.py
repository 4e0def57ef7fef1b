"""The plugin `tests/test_golden.py` replays the golden frames of `crates/plugd-protocol` against."""

import asyncio
import logging

from plugd import (ActionResult, ClientError, Group, HostError, Notification,
                   NotificationAction, Plugin, Retry)

plugin = Plugin()
seen = []
cancelled = []


@plugin.action(description="Greets someone")
async def greet(payload):
    return {"message": f"Hello, {payload['name']}!"}


@plugin.action()
async def fail(payload):
    raise ValueError("boom")


@plugin.action()
async def lookup(payload):
    raise ClientError("not_found", "no such image", status=404)


@plugin.action()
async def chatty(payload):
    logging.getLogger("hello").warning("careful")
    plugin.progress(0.5, "half")
    return None


@plugin.action()
async def announce(payload):
    try:
        await plugin.emit("image.imported", {"id": 7})
    except HostError as exc:
        return {"refused": exc.code}
    return {"emitted": True}


@plugin.action()
async def wait(payload):
    plugin.progress(message="started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.append(True)
        raise
    return None


@plugin.action()
async def state(payload):
    return {"seen": seen, "cancelled": cancelled, "params": plugin.params,
            "data_dir": str(plugin.data_dir), "limits": plugin.limits,
            "workers": plugin._max_workers, "services": plugin.services}


# Each host service as the golden frames show it (`kv_list` is the second page of the listing).
USES = {
    "kv_get": lambda: plugin.kv.get("img/a", "absent"),
    "kv_set": lambda: plugin.kv.set("img/a", {"w": 640}),
    "kv_delete": lambda: plugin.kv.delete("img/a"),
    "kv_list": lambda: plugin.kv.list("img/"),
    "kv_commit": lambda: plugin.kv.commit(puts={"img/a": 1, "img/b": 2}, deletes=["img/c"],
                                          expect={"img/a": 0, "img/d": None}),
    "kv_undo": plugin.kv.undo,
    "kv_redo": plugin.kv.redo,
    "params_get": plugin.fetch_params,
    "service_call": lambda: plugin.service("app:db", "query", {"sql": "select 1"}),
    "env_get": lambda: plugin.env_async("CLIENT_MANAGER_PORT", "unset", int),
    "task_submit": lambda: plugin.submit("embed", {"name": "Ada"}, key="index", priority=True),
}


@plugin.action()
async def use(payload):
    try:
        return {"got": await USES[payload]()}
    except HostError as exc:
        return {"code": exc.code, "message": exc.message}


@plugin.action()
async def relay(payload):
    return await plugin.call(payload["plugin"], payload["action"], payload["payload"], full=True)


@plugin.action()
async def full(payload):
    return ActionResult(
        value={"n": 2},
        notifications=[
            Notification("warning", "Careful", "It is hot", data={"t": 40},
                         actions=[NotificationAction("cool", "Cool down", {"t": 20})]),
            Notification(message="Done"),
        ],
        groups=[Group("pair", [1, 2], id="g1", score=0.5, scores={"size": 1.0}),
                Group("rest", [], key="k")],
        extra={"urls": ["https://example.com/a.png"]},
    )


@plugin.on_params_changed
def on_params(params):
    logging.getLogger("hello").info("params now %s", sorted(params))


@plugin.on_event("image.*")
async def on_image(topic, payload):
    seen.append([topic, payload])


@plugin.on_event("bad.*")
async def on_bad(topic, payload):
    raise ValueError(f"cannot handle {payload['name']}")


@plugin.task("embed")
async def embed(payload, ctx):
    ctx.progress(0.25, "embedding")
    return {"name": payload["name"], "vector": [0.5, 0.25]}


@plugin.task("flaky")
def flaky(payload, ctx):
    raise Retry("the GPU is busy")


@plugin.task("sleepy")
async def sleepy(payload, ctx):
    ctx.progress(message="started")
    await asyncio.sleep(60)


@plugin.after_last("index")
async def rebuild(key, ctx):
    return {"rebuilt": key, "attempt": ctx.attempt}


if __name__ == "__main__":
    plugin.run()

"""The plugin `tests/test_golden.py` replays the golden frames of `crates/plugd-protocol` against."""

import asyncio
import logging

from plugd import ClientError, HostError, Plugin

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


@plugin.on_event("image.*")
async def on_image(topic, payload):
    seen.append([topic, payload])


if __name__ == "__main__":
    plugin.run()

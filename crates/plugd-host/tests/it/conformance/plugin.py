"""The conformance suite's process plugin: the twin of the wasm test guest
(`plugd_wasm::test_guest`), action for action, task for task, event handler for event handler."""

import asyncio
import dataclasses
import logging
import os

from plugd import ClientError, HostError, Plugin, Retry

plugin = Plugin()


class Boom(Exception):
    code = "boom"


@dataclasses.dataclass
class Never:
    # No test sends this field, so every payload of the suite is rejected.
    never_sent: int


@plugin.action(description="Returns the payload")
async def echo(payload):
    return payload


@plugin.action(description="Always fails")
async def fail(payload):
    raise Boom("it failed on purpose")


@plugin.action(description="Rejects its payload", input=Never)
async def reject(payload):
    return None


@plugin.action(description="Dies in the middle of the call")
async def crash(payload):
    os._exit(70)


@plugin.action(description="Never finishes")
async def spin(payload):
    await asyncio.sleep(3600)


@plugin.action(description="Allocates past the memory limit")
async def grow(payload):
    hoard = bytearray(1 << 30)
    return len(hoard)


@plugin.action(name="log", description="Logs a line, then echoes")
async def log_action(payload):
    # The root logger: the host prefixes lines of a named logger (`plugin.log`) with its name,
    # and a wasm plugin's lines have no logger.
    logging.info("hello from the plugin")
    return payload


@plugin.action(description="Asks the host for `kv.get` and returns the error text")
async def ask(payload):
    try:
        return await plugin.request("kv.get", payload)
    except HostError as e:
        return e.message


@plugin.action(description="Emits `test.emitted`, then echoes; a refusal is its answer")
async def emit(payload):
    try:
        await plugin.emit("test.emitted", payload)
    except HostError as e:
        return e.message
    return payload


@plugin.action(description="Answers a 404 `not_found` client error")
async def client(payload):
    raise ClientError("not_found", "no such thing", status=404)


@plugin.action(description="Answers a client error with status 403")
async def forbidden(payload):
    raise ClientError("denied", "not yours", status=403)


async def _ask(method, payload):
    try:
        return await plugin.request(method, payload)
    except HostError as e:
        return e.message


for _method in ["kv.get", "kv.set", "kv.commit", "kv.undo", "plugin.call"]:
    def _make(method):
        async def handler(payload):
            return await _ask(method, payload)
        return handler

    plugin.action(name="host." + _method, description=f"Asks the host `{_method}`")(_make(_method))


async def _advance(counter):
    """Advances a counter in kv (state that outlives a failed run): compare-and-set from absent
    to 1, else from 1 to 2. True when a step took; False at its end (or without `kv`)."""
    for before, after in [(None, 1), (1, 2)]:
        try:
            await plugin.request("kv.commit", {"puts": {counter: after}, "expect": {counter: before}})
            return True
        except HostError:
            pass
    return False


class EventFailed(Exception):
    code = "event_failed"


@plugin.on_event("conformance.*")
async def on_event(topic, payload):
    # Every delivery is logged, failed ones too.
    logging.info(topic)
    if topic.endswith(".broken"):
        raise EventFailed("this handler always fails")
    # The first two deliveries fail, the later ones succeed.
    if topic.endswith(".flaky") and await _advance("flaky.event"):
        raise EventFailed("this handler fails twice")


@plugin.task("echo")
async def echo_task(payload):
    return {"value": payload}


@plugin.task("progress")
async def progress_task(payload, ctx):
    ctx.progress(0.5, "halfway")
    return {"value": payload}


@plugin.task("flaky")
async def flaky_task(payload):
    # The first two runs fail (retryable), the later ones succeed.
    if await _advance("flaky.task"):
        raise Retry("not yet")
    return {"value": payload}


@plugin.task("spin")
async def spin_task(payload):
    await asyncio.sleep(3600)


plugin.run()

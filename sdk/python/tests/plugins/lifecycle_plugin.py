"""A plugin with `on_start` and `on_stop` hooks (`tests/test_lifecycle.py`).

`HOOKS` (environment) picks the variant: `ok` (the default), `fail` (the second start hook
raises), `kv` (the start hook reads a key through the host) or `none` (no hooks at all).
Every hook logs `<hook> ran` (so the host sees the order beside `started`) and appends its
name to `ran`, which the action `ran` returns.
"""

import asyncio
import os
import threading

from plugd import Plugin

plugin = Plugin()
HOOKS = os.environ.get("HOOKS", "ok")
ran = []


def record(name, **extra):
    ran.append({"hook": name, **extra})
    plugin.log.info("%s ran", name)


if HOOKS in ("ok", "fail"):
    @plugin.on_start
    async def first():
        await asyncio.sleep(0.05)  # suspends: the next hook still waits for it
        record("first")

    @plugin.on_start
    def second(p):
        if HOOKS == "fail":
            raise ValueError("no model in the data dir")
        record("second", thread=threading.current_thread().name, same=p is plugin,
               params=p.params)

    @plugin.on_start()
    async def third(p):
        record("third", same=p is plugin)

    @plugin.on_stop
    async def stop_first():
        await asyncio.sleep(0.05)
        record("stop_first")

    @plugin.on_stop
    def stop_broken(p):
        raise RuntimeError("cannot flush")

    @plugin.on_stop
    def stop_last():
        record("stop_last", thread=threading.current_thread().name)

elif HOOKS == "kv":
    @plugin.on_start
    async def load(p):
        record("load", greeting=await p.kv.get("greeting", "none"))


@plugin.action()
async def ran_hooks(payload):
    return ran


@plugin.action()
async def slow(payload):
    await asyncio.sleep(payload)
    record("slow")
    return "finished"


@plugin.action()
def slow_sync(payload):
    import time
    time.sleep(payload)
    record("slow_sync")
    return "finished"


plugin.run()

"""A plugin that uses every host service, async and through the sync twins (`test_services.py`)."""

import asyncio

from plugd import HostError, Plugin

plugin = Plugin()


def run_ops(kv, ops):
    """Runs `[[op, *args], ...]` against the sync `kv` (`commit` takes one dict of keyword
    arguments); a refusal answers its code."""
    out = []
    for op, *args in ops:
        kwargs = args.pop() if op == "commit" else {}
        try:
            got = getattr(kv, op)(*args, **kwargs)
        except HostError as exc:
            got = {"error": exc.code, "rpc": exc.rpc_code}
        out.append([list(x) for x in got] if op == "list" else got)
    return out


@plugin.action()
async def kv_async(ops):
    out = []
    for op, *args in ops:
        kwargs = args.pop() if op == "commit" else {}
        try:
            got = await getattr(plugin.kv, op)(*args, **kwargs)
        except HostError as exc:
            got = {"error": exc.code, "rpc": exc.rpc_code}
        out.append([list(x) for x in got] if op == "list" else got)
    return out


@plugin.action()
def kv_sync(ops):
    return run_ops(plugin.kv_sync, ops)


@plugin.action()
async def kv_sync_on_the_loop(payload):
    try:
        plugin.kv_sync.get("a")
    except RuntimeError as exc:
        return str(exc)
    return "no error"


@plugin.action()
async def relay(p):
    # Time passes in the handler, so the deadline passed on is smaller than the one received.
    await asyncio.sleep(0.05)
    return await plugin.call(p["plugin"], p["action"], p.get("payload"), full=p.get("full", False))


@plugin.action()
def relay_sync(p):
    return plugin.call_sync(p["plugin"], p["action"], p.get("payload"), full=p.get("full", False))


@plugin.action()
async def relay_in_a_task(p):
    # A task started by the handler copies its context, and with it the chain.
    return await asyncio.create_task(plugin.call(p["plugin"], p["action"], p.get("payload")))


@plugin.action()
async def relay_unguarded(p):
    # A refusal not caught becomes this action's error, carrying the host's code.
    return await plugin.call(p["plugin"], p["action"], p.get("payload"))


@plugin.on_event("relay")
async def relay_event(topic, p):
    got = await plugin.call(p["plugin"], p["action"], p.get("payload"))
    plugin.log.info("relayed %s", got)


@plugin.action()
async def service(p):
    return await plugin.service(p["name"], p["method"], p.get("params"))


@plugin.action()
def service_sync(p):
    try:
        return plugin.service_sync(p["name"], p["method"], p.get("params"))
    except HostError as exc:
        return {"error": exc.code, "message": exc.message}


@plugin.action()
def env_sync(p):
    out = [plugin.env("PORT", 1, int), plugin.env("PORT", 1, int), plugin.env("DEBUG", False, bool),
           plugin.env("MISSING", "default")]
    for name, type_ in (("BAD", int), ("DEBUG", float), ("SECRET", str)):
        try:
            out.append(plugin.env(name, type=type_))
        except (ValueError, HostError) as exc:
            out.append(f"{type(exc).__name__}: {exc}")
    return out


@plugin.action()
async def env_async(p):
    # On the loop `env` cannot ask the host: an answer cached earlier, else the process env.
    return {"cached": plugin.env("PORT", type=int), "process": plugin.env("FROM_PROCESS"),
            "asked": await plugin.env_async("DEBUG", type=bool)}


@plugin.action()
async def params(p):
    return {"current": plugin.params, "fetched": await plugin.fetch_params(),
            "after": plugin.params}


seen_params = []


@plugin.on_params_changed
def params_changed(new):
    # A sync handler runs in the pool, so it may use the sync twins.
    seen_params.append({"params": new, "kv": plugin.kv_sync.get("threshold")})
    plugin.log.info("params changed")


@plugin.action()
async def seen(p):
    return seen_params


# Import-time use, as the seed's `get_env_config`: the process environment.
IMPORT_TIME = plugin.env("FROM_PROCESS", "unset")


@plugin.action()
async def import_time(p):
    return IMPORT_TIME


if __name__ == "__main__":
    plugin.run()

"""A plugin serving a plain ASGI app (no framework) with `plugin.serve_asgi`, for test_asgi.py.

Environment knobs: `NO_UVICORN=1` makes uvicorn unimportable, `FAIL_STARTUP=1` fails the app's
lifespan startup the way Starlette does, `MAX_REQUESTS=N` passes uvicorn's
`limit_max_requests` (the server then stops by itself after N requests).
"""

import asyncio
import json
import os
import sys
import traceback
from urllib.parse import parse_qs

if os.environ.get("NO_UVICORN"):
    sys.modules["uvicorn"] = None  # type: ignore[assignment]  # `import uvicorn` fails

from plugd import Plugin

plugin = Plugin()
state = {"hook": None, "lifespan": None, "requests": 0, "websockets": 0}


@plugin.on_start
def hook():
    state["hook"] = "ran"


@plugin.on_stop
def stopped():
    print(f"on_stop ran after {state['requests']} requests", flush=True)


@plugin.action()
def http_state(payload):
    return state


@plugin.action()
def inherited_fds(payload):
    """Which of the host's descriptors a program this plugin starts would inherit."""
    out = {}
    for fd in (3, 4, 5):
        try:
            out[str(fd)] = os.get_inheritable(fd)
        except OSError:
            pass
    return out


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("FAIL_STARTUP"):
                try:
                    raise RuntimeError("the database is down")
                except RuntimeError:
                    await send({"type": "lifespan.startup.failed",
                                "message": traceback.format_exc()})
                    raise
            # The app starts after the `on_start` hooks.
            state["lifespan"] = f"started after hook {state['hook']}"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            print("lifespan shutdown", flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


def describe(scope):
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    return {
        "type": scope["type"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "root_path": scope["root_path"],
        "scheme": scope["scheme"],
        "client": list(scope["client"]) if scope.get("client") else None,
        "host": headers.get("host"),
        "header_names": sorted(headers),
        "lifespan": state["lifespan"],
    }


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        state["websockets"] += 1
        await send({"type": "websocket.send", "text": json.dumps(describe(scope))})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "echo: " + message.get("text", "")})
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    state["requests"] += 1
    query = parse_qs(scope["query_string"].decode())
    if "sleep_ms" in query:
        await asyncio.sleep(int(query["sleep_ms"][0]) / 1000)
    out = describe(scope)
    out["method"] = scope["method"]
    out["body"] = body.decode()
    data = json.dumps(out).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


options = {}
if os.environ.get("MAX_REQUESTS"):
    options["limit_max_requests"] = int(os.environ["MAX_REQUESTS"])
if os.environ.get("WS"):
    options["ws"] = os.environ["WS"]
plugin.serve_asgi(app, **options)

if __name__ == "__main__":
    plugin.run()

"""`client-manager`: the FastAPI app of `client_manager.py` served through plugd, with plugd
actions beside it that share its state (the same event loop)."""

from dataclasses import dataclass

# `plugd serve` puts its own copy of the SDK on `PYTHONPATH`; fastapi and uvicorn come from the
# plugin's environment, built from requirements.txt.
from plugd import Plugin

from client_manager import Hub, create_app

plugin = Plugin()
hub = Hub()


@dataclass
class BroadcastInput:
    message: str


@plugin.action(description="Lists the connected WebSocket clients (the same list as "
                           "GET /api/clients)")
async def clients(payload):
    return hub.list()


@plugin.action(description="Sends `message` to every connected WebSocket client; returns how many "
                           "received it", input=BroadcastInput)
async def broadcast(req: BroadcastInput):
    return await hub.broadcast(None, req.message)  # clients get {"from": null, "message": ...}


@plugin.on_start
def started(p):
    p.log.info("client-manager %s: serving /health, /api/clients and /ws/{client_id}", p.version)


@plugin.on_stop
def stopped(p):
    # The HTTP side has stopped by now (its clients were closed with 1012, "service restart").
    p.log.info("client-manager stopping after %d client(s)", hub.served)


# Async actions run in the same event loop as the app, so they may touch `hub` directly.
plugin.serve_asgi(create_app(hub))

if __name__ == "__main__":
    plugin.run()

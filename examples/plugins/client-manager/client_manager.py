"""The client manager's FastAPI app, independent of plugd (`main.py` serves it as a plugin).

Run it on its own with `uvicorn --factory client_manager:create_app`.

- `GET /health`: `{"status": "ok", "clients": N}`
- `GET /api/clients`: the connected clients
- `WS /ws/{client_id}`: a client registers on connect; each text message it sends goes to every
  connected client as `{"from": client_id, "message": text}`; it is unregistered on disconnect
- `WS /ws-echo`: echoes every message back (for benchmarks)
- `GET /api/stream?n=3&interval=50`: Server-Sent Events, `n` events `data: {"i": k}`, one every
  `interval` ms, then the stream ends
- `POST /api/upload`: reads the body as it arrives; answers `{"bytes": N}`
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

# A client that does not take a broadcast within this time misses it (and only it).
SEND_TIMEOUT = 5.0


@dataclass
class Client:
    id: str
    websocket: WebSocket
    connected_at: float = field(default_factory=time.time)
    messages: int = 0  # text messages it sent

    def info(self) -> Dict[str, Any]:
        return {"id": self.id, "connected_at": self.connected_at, "messages": self.messages}


class Hub:
    """The connected clients. Used from the event loop only (the app's handlers and the
    plugin's `async` actions run in the same loop)."""

    def __init__(self) -> None:
        self.clients: Dict[str, Client] = {}
        self.served = 0  # clients ever registered

    def register(self, client_id: str, websocket: WebSocket) -> Optional[Client]:
        if client_id in self.clients:
            return None
        client = self.clients[client_id] = Client(client_id, websocket)
        self.served += 1
        return client

    def unregister(self, client: Client) -> None:
        if self.clients.get(client.id) is client:
            del self.clients[client.id]

    def list(self) -> List[Dict[str, Any]]:
        return [c.info() for c in self.clients.values()]

    async def broadcast(self, sender: Optional[str], message: str) -> int:
        """Sends `{"from": sender, "message": message}` to every connected client (`sender` is
        None for the host); returns how many received it."""
        text = json.dumps({"from": sender, "message": message})
        clients = list(self.clients.values())
        if not clients:
            return 0
        results = await asyncio.gather(
            *(asyncio.wait_for(c.websocket.send_text(text), SEND_TIMEOUT) for c in clients),
            return_exceptions=True)
        return sum(1 for r in results if not isinstance(r, BaseException))


def create_app(hub: Optional[Hub] = None) -> FastAPI:
    hub = hub or Hub()
    app = FastAPI(title="Client Manager", version="0.1.0")
    app.state.hub = hub

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "clients": len(hub.clients)}

    @app.get("/api/clients")
    async def clients() -> List[Dict[str, Any]]:
        return hub.list()

    @app.websocket("/ws/{client_id}")
    async def client_socket(websocket: WebSocket, client_id: str) -> None:
        # Registered before the handshake completes: a client that is connected is listed.
        client = hub.register(client_id, websocket)
        if client is None:
            await websocket.accept()
            await websocket.close(code=4409, reason=f"client `{client_id}` is already connected")
            return
        try:
            await websocket.accept()
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    continue  # binary messages are not broadcast
                client.messages += 1
                await hub.broadcast(client_id, text)
        except WebSocketDisconnect:
            pass
        finally:
            hub.unregister(client)

    @app.websocket("/ws-echo")
    async def echo_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await websocket.send_text(message["text"])
                elif message.get("bytes") is not None:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect:
            pass

    @app.get("/api/stream")
    async def stream(n: int = Query(3, ge=0, le=100_000),
                     interval: int = Query(50, ge=0, le=60_000)) -> StreamingResponse:
        async def events():
            for i in range(n):
                if i:
                    await asyncio.sleep(interval / 1000)
                yield f"data: {json.dumps({'i': i})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/api/upload")
    async def upload(request: Request) -> Dict[str, int]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return {"bytes": total}

    return app

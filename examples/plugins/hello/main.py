"""`hello`: greets people, echoes payloads and logs `hello.*` events."""

import sys
from dataclasses import dataclass
from pathlib import Path

try:
    from plugd import Plugin
except ImportError:  # running from a plugd checkout without `pip install ./sdk/python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "sdk" / "python" / "src"))
    from plugd import Plugin

plugin = Plugin()


@dataclass
class GreetInput:
    name: str


@plugin.action(description="Greets someone by name", input=GreetInput)
async def greet(req: GreetInput):
    return {"message": f"Hello, {req.name}!"}


@plugin.action(description="Returns the payload unchanged")
async def echo(payload):
    return payload


@plugin.on_event("hello.*")
async def on_hello(topic, payload):
    plugin.log.info("Event `%s`: %s", topic, payload)


if __name__ == "__main__":
    plugin.run()

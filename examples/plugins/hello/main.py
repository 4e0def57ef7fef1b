"""`hello`: greets people, echoes payloads and logs `hello.*` events."""

from dataclasses import dataclass

# `plugd serve` puts its own copy of the SDK on `PYTHONPATH`.
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

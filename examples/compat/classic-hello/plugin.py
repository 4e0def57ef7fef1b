"""classic_hello: a class-based plugin (``core.base_plugin.BasePlugin``).

Services: ``example.hello(name)`` greets (the greeting comes from the env config `GREETING`)
and publishes ``classic.hello``; ``example.count()`` counts calls in storage;
``example.lifecycle()`` lists the lifecycle hooks run so far (kept in storage, so across
restarts); ``example.received()`` lists the topics of the ``classic.*`` events received.
"""

from core.base_plugin import BasePlugin, PluginMetadata

NAMESPACE = "classic_hello"


class HelloPlugin(BasePlugin):
    """Greets people and keeps a few counters."""

    def __init__(self, runtime=None):
        super().__init__(runtime)
        self.received = []

    @property
    def metadata(self):
        return PluginMetadata(name="classic_hello", version="1.0.0",
                              description="Greets people", author="plugd examples",
                              dependencies=[])

    async def _record(self, hook):
        storage = self.runtime.storage
        hooks = await storage.get(NAMESPACE, "lifecycle", [])
        hooks.append(hook)
        await storage.set(NAMESPACE, "lifecycle", hooks)

    async def on_load(self):
        await self._record("on_load")
        services = self.runtime.service_registry
        await services.register("example.hello", self.hello)
        await services.register("example.count", self.count)
        await services.register("example.lifecycle", self.lifecycle)
        await services.register("example.received", self.topics)
        await self.runtime.event_bus.subscribe("classic.*", self.on_classic_event)

    async def on_start(self):
        await self._record("on_start")

    async def on_stop(self):
        await self._record("on_stop")

    async def on_unload(self):
        await self._record("on_unload")
        await self.runtime.event_bus.unsubscribe("classic.*", self.on_classic_event)
        for name in ("example.hello", "example.count", "example.lifecycle", "example.received"):
            await self.runtime.service_registry.unregister(name)

    async def on_classic_event(self, event_type, data):
        self.received.append(event_type)

    async def hello(self, name="world"):
        greeting = self.get_env_config("GREETING", default="Hello")
        await self.runtime.event_bus.publish("classic.hello", {"name": name})
        return {"greeting": f"{greeting}, {name}!"}

    async def count(self):
        storage = self.runtime.storage
        count = await storage.get(NAMESPACE, "count", 0) + 1
        await storage.set(NAMESPACE, "count", count)
        return {"count": count}

    async def lifecycle(self):
        return await self.runtime.storage.get(NAMESPACE, "lifecycle", [])

    async def topics(self):
        return list(self.received)

"""A class-based plugin probing `plugd.compat.classic` (tests/test_compat.py): no `metadata`
of its own and an `__init__` without `runtime`."""

from core.base_plugin import BasePlugin


class ProbePlugin(BasePlugin):
    def __init__(self):
        super().__init__()
        self.seen = []

    async def on_load(self):
        services = self.runtime.services  # the alias; registering without `await` works too
        services.register("probe.double", lambda x=1: x * 2)
        services.register("probe.relay", self.relay)
        services.register("probe.log", self.log_it)
        services.register("probe.storage", self.storage)
        services.register("probe.env", self.env)
        services.register("probe.meta", self.meta)
        services.register("other.meta", self.meta)
        services.register("probe.publish", self.publish)
        self.runtime.events.subscribe("*", self.broken)
        self.runtime.events.subscribe("probe.x", self.keep)

    async def relay(self, **kwargs):
        return await self.runtime.service_registry.call("store.put", **kwargs)

    async def log_it(self):
        await self.runtime.service_registry.call("logger.log", level="warning",
                                                 message="from the probe", plugin=self.name)
        return self.runtime.service_registry.has_service("probe.log")

    async def storage(self):
        storage = self.runtime.storage
        for key in ("a1", "a2", "b1"):
            await storage.set("probe", key, key.upper())
        before = await storage.list_keys("probe", "a")
        await storage.delete("probe", "a1")
        return [before, await storage.list_keys("probe"), await storage.get("probe", "a1", "gone")]

    def env(self):
        return [self.get_env_config_int("NUM", 5), self.get_env_config_int("BAD", 5),
                self.get_env_config_bool("FLAG"), self.get_env_config("X", prefix="CUSTOM")]

    def meta(self):
        return {"name": self.name, "version": self.metadata.version,
                "has_runtime": self.runtime is not None}

    async def publish(self, topic):
        await self.runtime.events.publish(topic, {"n": 1})
        return self.seen

    def broken(self, topic, data):
        raise ValueError(f"cannot take {topic}")

    def keep(self, topic, data):
        self.seen.append(topic)

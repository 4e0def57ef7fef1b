"""`thumbs`: plans thumbnail sizes, and remembers them in its dependency `store` through
`plugin.call` (the host allows calls to declared dependencies only)."""

from dataclasses import dataclass

# `plugd serve` puts its own copy of the SDK on `PYTHONPATH`.
from plugd import Plugin

plugin = Plugin()


@dataclass
class PlanInput:
    width: int
    height: int
    max: int

    def __post_init__(self):
        for field in ("width", "height", "max"):
            if getattr(self, field) < 1:
                raise ValueError(f"`{field}` must be at least 1")


def plan_size(width: int, height: int, limit: int) -> dict:
    """The largest size within `limit` x `limit` with the image's aspect ratio, never upscaled."""
    scale = min(1.0, limit / max(width, height))
    return {
        "width": max(1, round(width * scale)),
        "height": max(1, round(height * scale)),
        "scale": scale,
    }


@dataclass
class RememberInput(PlanInput):
    key: str = ""

    def __post_init__(self):
        super().__post_init__()
        if not self.key:
            raise ValueError("`key` must not be empty")


@plugin.action(description="Returns the thumbnail size fitting in `max` x `max` that keeps the aspect ratio",
               input=PlanInput)
async def plan(req: PlanInput):
    return plan_size(req.width, req.height, req.max)


@plugin.action(description="Plans the size and stores it in `store` under `thumbs/KEY`",
               input=RememberInput)
async def remember(req: RememberInput):
    size = plan_size(req.width, req.height, req.max)
    key = f"thumbs/{req.key}"
    # A call to another plugin: `store` sees `thumbs` as the caller, and this call's deadline.
    await plugin.call("store", "put", {"key": key, "value": size})
    return {"key": key, "size": size}


if __name__ == "__main__":
    plugin.run()

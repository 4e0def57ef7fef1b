"""`thumbs`: plans thumbnail sizes (pure computation; it depends on `store` to show a load wave)."""

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


@plugin.action(description="Returns the thumbnail size fitting in `max` x `max` that keeps the aspect ratio",
               input=PlanInput)
async def plan(req: PlanInput):
    return plan_size(req.width, req.height, req.max)


if __name__ == "__main__":
    plugin.run()

"""`gallery`: clusters images by a score and tags them through the host's kv.

Shows params (`plugin.params`, `@plugin.on_params_changed`), an action with a typed input that
returns groups and notifications, and a kv commit of several keys with undo and redo.
"""

from dataclasses import dataclass
from typing import List

# `plugd serve` puts its own copy of the SDK on `PYTHONPATH`.
from plugd import ActionResult, Group, Notification, NotificationAction, Plugin

plugin = Plugin()


@dataclass
class Image:
    id: str
    score: float


@dataclass
class ClusterInput:
    images: List[Image]


@dataclass
class TagInput:
    ids: List[str]
    tag: str


def clusters(images: List[Image], threshold: float) -> List[List[Image]]:
    """Sorted by score, a new group starts where the gap to the previous image is larger than
    `1 - threshold`."""
    gap = 1.0 - threshold
    groups: List[List[Image]] = []
    for image in sorted(images, key=lambda i: (i.score, i.id)):
        if groups and image.score - groups[-1][-1].score <= gap:
            groups[-1].append(image)
        else:
            groups.append([image])
    return groups


@plugin.action(description="Groups images whose scores are close; suggests tagging each group",
               input=ClusterInput)
async def cluster(req: ClusterInput):
    batch_size = plugin.params["batch_size"]
    threshold = plugin.params["threshold"]
    for done in range(0, len(req.images), batch_size):
        plugin.progress(done / len(req.images), f"{done} of {len(req.images)} images")
    found = clusters(req.images, threshold)
    groups = [
        Group(
            f"Cluster {n}",
            [i.id for i in members],
            id=f"cluster-{n}",
            score=round(sum(i.score for i in members) / len(members), 6),
            scores={"spread": round(members[-1].score - members[0].score, 6)},
        )
        for n, members in enumerate(found, start=1)
    ]
    notifications = [
        Notification(
            "success",
            "Clustered",
            f"{len(req.images)} images in {len(groups)} groups (threshold {threshold})",
            actions=[
                NotificationAction("tag", f"Tag {g.name}", {"ids": list(g.members), "tag": g.id})
                for g in groups
            ],
        )
    ]
    alone = [g.members[0] for g in groups if len(g.members) == 1]
    if alone:
        notifications.append(Notification(
            "warning", "Outliers", f"{len(alone)} image(s) match no other", data={"ids": alone}))
    return ActionResult(
        value={"images": len(req.images), "groups": len(groups)},
        notifications=notifications,
        groups=groups,
    )


@plugin.action(description="Tags images in one commit (undo reverts all of them)", input=TagInput)
async def tag(req: TagInput):
    commit = await plugin.kv.commit(puts={f"tag/{i}": req.tag for i in req.ids})
    return {"commit": commit, "tagged": len(req.ids)}


@plugin.action(description="The tag of each tagged image")
async def tags(payload):
    return {key[len("tag/"):]: value for key, value in await plugin.kv.list("tag/")}


@plugin.action(description="Reverts the last tagging commit")
async def undo(payload):
    return {"undone": await plugin.kv.undo()}


@plugin.action(description="Re-applies the last undone commit")
async def redo(payload):
    return {"redone": await plugin.kv.redo()}


@plugin.on_params_changed
async def params_changed(params):
    plugin.log.info("Params changed: batch_size=%s, threshold=%s",
                    params["batch_size"], params["threshold"])


if __name__ == "__main__":
    plugin.run()

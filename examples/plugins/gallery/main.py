"""`gallery`: clusters images by a score and tags them through the host's kv; indexes imported
images in the background.

Shows params (`plugin.params`, `@plugin.on_params_changed`), an action with a typed input that
returns groups and notifications, a kv commit of several keys with undo and redo, and durable
events and tasks: each `image.imported` event queues one `embed` task (key `index`) that reports
its progress, and `@plugin.after_last("index")` rebuilds the similarity index once the last of
them has finished.

Embeddings and the index are files in the plugin's data dir, not kv: every kv write is an
undoable commit, and `undo` / `redo` here are for the tags alone.
"""

import asyncio
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

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


# --- Background indexing: events -> tasks -> one rebuild -------------------------------------

#: Dimensions of an embedding.
DIMS = 16
#: Progress steps of one embedding (each computes a quarter of the vector).
STEPS = 4
#: Seconds one step takes on top of the hashing: a stand-in for a real model's inference time,
#: so that a burst of imports overlaps and the index is rebuilt once for the whole burst.
MODEL_STEP_SECONDS = 0.05


def embedding_dir() -> Path:
    return plugin.data_dir / "embeddings"


def index_file() -> Path:
    return plugin.data_dir / "index.json"


def write_json(path: Path, value) -> None:
    """Writes `value` as JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    os.replace(tmp, path)


def source_bytes(path: str) -> bytes:
    """The image's bytes when the plugin can read the file, else its path: the stand-in model
    embeds whichever it gets, deterministically."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return path.encode()


def embed_part(data: bytes, part: int) -> List[float]:
    """`DIMS / STEPS` coordinates in [-1, 1] from a keyed hash of the data."""
    per = DIMS // STEPS
    digest = hashlib.blake2b(data, digest_size=2 * per, person=b"gallery-embed",
                             salt=bytes([part]) * 16).digest()
    return [int.from_bytes(digest[2 * i:2 * i + 2], "big") / 32767.5 - 1.0 for i in range(per)]


def normalized(vector: List[float]) -> List[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [round(x / norm, 6) for x in vector]


@plugin.on_event("image.imported")
async def imported(topic, payload):
    """One `embed` task per imported image, all under the key `index`."""
    path = payload.get("path") if isinstance(payload, dict) else None
    if not isinstance(path, str) or not path:
        plugin.log.warning("Ignored `%s` without a `path`: %r", topic, payload)
        return
    task = await plugin.submit("embed", {"path": path}, key="index")
    plugin.log.info("Queued embed task %s for %s", task, path)


@plugin.task("embed")
async def embed(payload, ctx):
    """Embeds one image in `STEPS` steps, reporting progress after each."""
    path = payload["path"]
    data = await asyncio.to_thread(source_bytes, path)
    vector: List[float] = []
    for part in range(STEPS):
        vector += embed_part(data, part)
        await asyncio.sleep(MODEL_STEP_SECONDS)
        ctx.progress((part + 1) / STEPS, f"{path}: {len(vector)} of {DIMS} dimensions")
    vector = normalized(vector)
    name = hashlib.sha1(path.encode()).hexdigest() + ".json"
    write_json(embedding_dir() / name, {"path": path, "vector": vector, "bytes": len(data)})
    return {"path": path, "dims": len(vector)}


@plugin.after_last("index")
async def rebuild(key, ctx):
    """Once the last `index` task finished: every image's nearest neighbour by cosine
    similarity, from the stored embeddings."""
    vectors: Dict[str, List[float]] = {}
    files = sorted(embedding_dir().glob("*.json")) if embedding_dir().is_dir() else []
    for n, file in enumerate(files, start=1):
        entry = json.loads(file.read_text())
        vectors[entry["path"]] = entry["vector"]
        ctx.progress(0.5 * n / len(files), f"read {n} of {len(files)} embeddings")
    paths = sorted(vectors)
    nearest = {}
    for n, a in enumerate(paths, start=1):
        best = max(((sum(x * y for x, y in zip(vectors[a], vectors[b])), b)
                    for b in paths if b != a), default=None)
        if best is not None:
            nearest[a] = {"path": best[1], "similarity": round(best[0], 6)}
        ctx.progress(0.5 + 0.5 * n / len(paths), f"indexed {n} of {len(paths)} images")
    previous = read_index()
    index = {
        "images": len(paths),
        "dims": DIMS,
        "nearest": nearest,
        "rebuilds": previous.get("rebuilds", 0) + 1,
    }
    write_json(index_file(), index)
    plugin.log.info("Rebuilt the index of %d images (rebuild %d)", len(paths), index["rebuilds"])
    return {"images": len(paths), "rebuilds": index["rebuilds"]}


def read_index() -> dict:
    try:
        return json.loads(index_file().read_text())
    except (OSError, ValueError):
        return {}


@plugin.action(description="The similarity index: each image's nearest neighbour, and how often it was rebuilt")
async def index(payload):
    return read_index() or {"images": 0, "dims": DIMS, "nearest": {}, "rebuilds": 0}


@plugin.on_params_changed
async def params_changed(params):
    plugin.log.info("Params changed: batch_size=%s, threshold=%s",
                    params["batch_size"], params["threshold"])


if __name__ == "__main__":
    plugin.run()

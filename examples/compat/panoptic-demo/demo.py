"""The demo plugin: splits a selection into groups, and remembers values undoably."""

from pydantic import BaseModel

from panoptic.core.plugin.plugin import APlugin
from panoptic.models import ActionContext
from panoptic.models.results import ActionResult, Group, Notif, NotifType


class DemoParams(BaseModel):
    """Settings of the demo.

    @threshold: how similar two images must be to share a group
    @label: prefix of the group names
    """

    threshold: float = 0.5
    label: str = "x"


class DemoPlugin(APlugin):
    """Demo of a Panoptic plugin: clusters a selection round-robin and remembers values."""

    def __init__(self, project, plugin_path, name):
        super().__init__(name=name, project=project, plugin_path=plugin_path)
        self.params = DemoParams()
        self.add_action_easy(self.cluster, ["group"])
        self.add_action_easy(self.remember, ["execute"])

    async def cluster(self, context: ActionContext, nb_clusters: int = 2):
        """Splits the selected instances into groups, one after the other.

        @nb_clusters: how many groups to make
        """
        ids = context.instance_ids or []
        groups = [Group(ids=ids[i::nb_clusters], name=f"{self.params.label}{i + 1}")
                  for i in range(nb_clusters)]
        notif = Notif(type=NotifType.INFO, name="cluster",
                      message=f"{len(ids)} instances in {nb_clusters} groups "
                              f"(threshold {self.params.threshold})")
        return ActionResult(groups=groups, notifs=[notif])

    async def remember(self, context: ActionContext, key: str, value: str):
        """Stores a value under a key, as one undoable change.

        @key: the name to store it under
        @value: the text to store
        """
        commit = await self.project.do({"puts": {key: value}})
        return ActionResult(value={"commit": commit, "key": key})

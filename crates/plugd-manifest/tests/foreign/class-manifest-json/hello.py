from core.base_plugin import BasePlugin


class HelloPlugin(BasePlugin):
    pass

from core.base_plugin import BasePlugin


class ClientManagerPlugin(BasePlugin):
    pass

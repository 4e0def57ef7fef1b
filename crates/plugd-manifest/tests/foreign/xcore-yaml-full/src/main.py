class Plugin:
    async def handle(self, action, payload):
        return {"status": "ok"}

"""`greeter`: asks the embedding application's `db` service for a user and greets them."""

from dataclasses import dataclass

from plugd import ClientError, HostError, Plugin

plugin = Plugin()


@dataclass
class GreetInput:
    id: int


@plugin.action(description="Greets the user with id `id`, whose name the application's db holds",
               input=GreetInput)
async def greet(req: GreetInput):
    try:
        user = await plugin.service("db", "user", {"id": req.id})
    except HostError as e:
        if e.code == "not_found":
            raise ClientError("not_found", e.message, status=404)
        raise
    return {"message": f"Hello, {user['name']}!", "visits": user["visits"]}


if __name__ == "__main__":
    plugin.run()

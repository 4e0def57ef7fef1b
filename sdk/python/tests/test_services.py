"""Host services through the SDK (`plugin.kv`, `kv_sync`, `call`, `service`, `env`, params)
against a fake host whose services are a small in-memory model (no plugd needed)."""

import pytest

from conftest import PLUGINS
from fakehost import KvModel


class Refused(Exception):
    def __init__(self, rpc, code, message):
        super().__init__(message)
        self.rpc, self.code, self.message = rpc, code, message


class Services(KvModel):
    """The host's side: kv with commits, undo and redo (`KvModel`, with a key length limit,
    pages and compare-and-set), params, env, plugin and app calls."""

    def __init__(self, h, page=2):
        super().__init__()
        self.h = h
        self.page = page
        self.env = {"PORT": "10000", "DEBUG": "yes", "BAD": "ten"}
        self.env_asked = []
        self.params = {"threshold": 3}
        self.calls = []
        self.requests = []
        h.request_handler = self.handle

    def handle(self, msg):
        method, params = msg["method"], msg["params"]
        self.requests.append((method, params))
        try:
            reply = {"result": getattr(self, method.replace(".", "_"))(params)}
        except Refused as r:
            reply = {"error": {"code": r.rpc, "message": r.message, "data": {"code": r.code}}}
        self.h.send({"jsonrpc": "2.0", "id": msg["id"], **reply})

    def kv_set(self, p):
        if len(p["key"]) > 10:
            raise Refused(-32022, "limit_exceeded", "Key is longer than 10 bytes")
        return self._apply({p["key"]: p["value"]}, [])

    def kv_list(self, p):
        keys = sorted(k for k in self.kv if k.startswith(p.get("prefix", ""))
                      and ("after" not in p or k > p["after"]))
        page = keys[:self.page]
        nxt = page[-1] if len(keys) > self.page else None
        return {"items": [{"key": k, "value": self.kv[k]} for k in page], "next": nxt}

    def kv_commit(self, p):
        for k, want in p.get("expect", {}).items():
            if self.kv.get(k) != want:
                raise Refused(-32022, "conflict", f"Key `{k}` changed")
        return self._apply(p.get("puts", {}), p.get("deletes", []))

    def params_get(self, p):
        return {"params": self.params}

    def env_get(self, p):
        self.env_asked.append(p["name"])
        if p["name"] == "SECRET":
            raise Refused(-32020, "not_granted", "Variable `SECRET` is not in `permissions.env`")
        return {"value": self.env.get(p["name"])}

    def plugin_call(self, p):
        self.calls.append(p)
        if p["action"] == "loop":
            raise Refused(-32022, "cycle", "Calling `a` from `b` would make a cycle: a → b → a")
        return {"value": {"echo": p["payload"]},
                "notifications": [{"level": "info", "message": "called"}]}

    def service_call(self, p):
        if p["service"] == "down":
            raise Refused(-32022, "unavailable", "Service `down` is not running")
        return {"service": p["service"], "method": p["method"], "params": p["params"]}


@pytest.fixture
def plugin(make_host):
    h = make_host(PLUGINS / "services_plugin.py", env={"FROM_PROCESS": "from env"},
                  params={"threshold": 1})
    return h, Services(h)


def value(resp):
    assert "error" not in resp, resp
    return resp["result"]["value"]


KV_SCRIPT = [
    ["get", "a", "none"],
    ["set", "a", 1],
    ["set", "img/1", {"w": 1}],
    ["set", "img/2", 2],
    ["set", "img/3", 3],
    ["get", "a"],
    ["delete", "img/2"],
    ["list", "img/"],
    ["list", ""],
    ["commit", {"puts": {"b": 2, "img/4": 4}, "deletes": ["a"], "expect": {"a": 1, "b": None}}],
    ["commit", {"puts": {"b": 3}, "expect": {"b": None}}],
    ["set", "much-too-long-key", 1],
    ["undo"],
    ["get", "b", "gone"],
    ["redo"],
    ["redo"],
    ["undo"], ["undo"], ["undo"], ["undo"], ["undo"], ["undo"], ["undo"],
    ["list", ""],
]

KV_RESULTS = [
    "none", 1, 2, 3, 4, 1, 5,
    [["img/1", {"w": 1}], ["img/3", 3]],
    [["a", 1], ["img/1", {"w": 1}], ["img/3", 3]],
    6,
    {"error": "conflict", "rpc": -32022},
    {"error": "limit_exceeded", "rpc": -32022},
    6, "gone", 6, None,
    6, 5, 4, 3, 2, 1, None,
    [],
]


@pytest.mark.parametrize("action", ["kv_async", "kv_sync"])
def test_kv_against_a_model(plugin, action):
    h, services = plugin
    assert value(h.call(action, KV_SCRIPT)) == KV_RESULTS
    # `list` paged through `next` (pages of 2): the second listing took two requests.
    lists = [p for m, p in services.requests if m == "kv.list"]
    assert lists == [{"prefix": "img/"}, {"prefix": ""}, {"prefix": "", "after": "img/1"},
                     {"prefix": ""}]
    assert [p for m, p in services.requests if m == "kv.commit"][0] == {
        "puts": {"b": 2, "img/4": 4}, "deletes": ["a"], "expect": {"a": 1, "b": None}}


def test_kv_sync_refuses_to_block_the_event_loop(plugin):
    h, _ = plugin
    assert value(h.call("kv_sync_on_the_loop")) == (
        "This would block the event loop; hint: in async code use `await plugin.kv...`, "
        "`await plugin.call(...)` or `await plugin.service(...)`")


@pytest.mark.parametrize("action", ["relay", "relay_sync", "relay_in_a_task"])
def test_plugin_call_carries_the_handlers_chain_and_a_smaller_deadline(plugin, action):
    h, services = plugin
    rid = h.request("call", {"action": action, "deadline_ms": 5000, "chain": ["app-a", "b"],
                             "payload": {"plugin": "store", "action": "put", "payload": [1]}})
    assert value(h.response(rid)) == {"echo": [1]}
    (call,) = services.calls
    context = call.pop("context")
    assert call == {"plugin": "store", "action": "put", "payload": [1]}
    assert context["chain"] == ["app-a", "b"]
    assert 0 < context["deadline_ms"] <= 5000
    if action == "relay":  # it slept 50 ms first
        assert context["deadline_ms"] <= 4950


def test_a_call_from_an_app_sends_an_empty_chain_and_full_returns_the_whole_result(plugin):
    h, services = plugin
    got = value(h.call("relay", {"plugin": "store", "action": "put", "payload": 1, "full": True},
                       deadline_ms=3000))
    assert got == {"value": {"echo": 1}, "notifications": [{"level": "info", "message": "called"}]}
    assert services.calls[0]["context"]["chain"] == []
    assert 0 < services.calls[0]["context"]["deadline_ms"] <= 2950


def test_a_call_outside_a_handler_has_no_context(plugin):
    h, services = plugin
    h.notify("event", {"topic": "relay", "payload": {"plugin": "store", "action": "put"}})
    h.wait_notification("log", lambda p: p["message"].startswith("relayed"))
    assert services.calls == [{"plugin": "store", "action": "put", "payload": None}]


def test_a_refused_call_raises_host_error_with_the_code(plugin):
    h, _ = plugin
    resp = h.call("relay_unguarded", {"plugin": "a", "action": "loop"})
    # Not caught, it fails the action with the host's code, which the host maps to its error.
    assert resp["error"] == {"code": -32003, "message": "Calling `a` from `b` would make a cycle: "
                             "a → b → a", "data": {"type": "HostError", "code": "cycle"}}


def test_app_services(plugin):
    h, services = plugin
    assert value(h.call("service", {"name": "app:db", "method": "query",
                                    "params": {"sql": "select 1"}})) == {
        "service": "db", "method": "query", "params": {"sql": "select 1"}}
    assert value(h.call("service_sync", {"name": "db", "method": "ping"})) == {
        "service": "db", "method": "ping", "params": {}}
    assert value(h.call("service_sync", {"name": "down", "method": "ping"})) == {
        "error": "unavailable", "message": "Service `down` is not running"}


def test_env_asks_the_host_once_per_name_and_converts(plugin):
    h, services = plugin
    assert value(h.call("env_sync")) == [
        10000, 10000, True, "default",
        "ValueError: Environment variable `BAD` is `ten`, not a valid int: invalid literal for "
        "int() with base 10: 'ten'",
        "ValueError: Environment variable `DEBUG` is `yes`, not a valid float: could not convert "
        "string to float: 'yes'",
        "HostError: Variable `SECRET` is not in `permissions.env`",
    ]
    assert services.env_asked == ["PORT", "DEBUG", "MISSING", "BAD", "SECRET"]
    # On the loop: the cached answer, the process environment, and `env_async` asks no more
    # than once.
    assert value(h.call("env_async")) == {"cached": 10000, "process": "from env", "asked": True}
    assert services.env_asked == ["PORT", "DEBUG", "MISSING", "BAD", "SECRET"]
    assert value(h.call("import_time")) == "from env"


@pytest.mark.parametrize("text, want", [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                        ("0", False), ("no", False), ("", False)])
def test_env_bool(text, want):
    from plugd._plugin import convert_env
    assert convert_env("X", text, None, bool) is want
    with pytest.raises(ValueError, match="`X` is `maybe`, not a boolean; hint: use 1/true/yes/on"):
        convert_env("X", "maybe", None, bool)
    assert convert_env("X", None, 5, int) == 5


def test_params_initialize_changed_and_fetched(plugin):
    h, services = plugin
    assert value(h.call("params")) == {"current": {"threshold": 1}, "fetched": {"threshold": 3},
                                       "after": {"threshold": 3}}
    services.kv["threshold"] = "in kv"
    h.notify("params.changed", {"params": {"threshold": 7}})
    h.wait_notification("log", lambda p: p["message"] == "params changed")
    assert value(h.call("seen")) == [{"params": {"threshold": 7}, "kv": "in kv"}]
    assert value(h.call("params"))["current"] == {"threshold": 7}


def test_host_error_codes():
    from plugd import HostError
    e = HostError.from_rpc({"code": -32022, "message": "m", "data": {"code": "conflict"}})
    assert (e.code, e.rpc_code, e.message, str(e)) == ("conflict", -32022, "m", "m")
    assert HostError.from_rpc({"code": -32020, "message": "no"}).code == "not_granted"
    assert HostError.from_rpc({"code": -32601, "message": "no"}).code == "unknown_method"
    assert HostError.from_rpc({"code": -32021, "message": "no"}).code == "too_many_requests"
    assert HostError.from_rpc({"code": -32099, "message": "no"}).code == "-32099"
    assert HostError.from_rpc("weird").code == "failed"

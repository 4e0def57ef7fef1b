"""plugd.compat: foreign plugins run unchanged. Each test starts `python3 -m plugd.compat
'<JSON>'` the way plugd does (the package dir as the current dir, a data dir of its own) on an
example of examples/compat/ or a package of tests/plugins/compat/, against a fake host whose
services (kv with undo, env, emit, plugin calls, tasks) are a small in-memory model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PLUGINS
from fakehost import SDK_SRC, FakeHost, KvModel
from plugd import ClientError, Plugin
from plugd.compat import parse_config
from plugd.compat._common import SEED_MARKER, ConfigError, seed_data
from plugd.compat.xcore import ERROR_STATUS, map_answer

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "compat"
XCORE = EXAMPLES / "xcore-notes"
CLASSIC = EXAMPLES / "classic-hello"
PANOPTIC = EXAMPLES / "panoptic-demo"
TEST_PACKAGES = PLUGINS / "compat"

XCORE_CONFIG = {"format": "xcore", "entry": "src/main.py", "name": "notes manager",
                "env": {"NOTES_TITLE": "${NOTES_TITLE}"}}
CLASSIC_CONFIG = {"format": "classic", "module": "plugin", "class": "HelloPlugin",
                  "name": "classic_hello", "version": "1.0.0", "description": "Greets people",
                  "author": "plugd examples", "dependencies": []}
PANOPTIC_CONFIG = {"format": "panoptic", "name": "panoptic demo"}


class HostModel(KvModel):
    """The host's side: kv with commits, undo and redo (`KvModel`); env (``refused`` names
    answer `not_granted`, others their value or unset); emit, `plugin.call` and `task.submit`
    (recorded)."""

    def __init__(self, env=None, refused=()):
        super().__init__()
        self.env = dict(env or {})
        self.refused = set(refused)
        self.env_asked = []
        self.emitted = []
        self.calls = []
        self.submitted = []

    def handle(self, h, msg):
        method, params = msg["method"], msg["params"]
        try:
            reply = {"result": getattr(self, method.replace(".", "_"))(params)}
        except PermissionError as exc:
            reply = {"error": {"code": -32020, "message": str(exc),
                               "data": {"code": "not_granted"}}}
        h.send({"jsonrpc": "2.0", "id": msg["id"], **reply})

    def env_get(self, p):
        self.env_asked.append(p["name"])
        if p["name"] in self.refused:
            raise PermissionError(f"Variable `{p['name']}` is not in `permissions.env`")
        return {"value": self.env.get(p["name"])}

    def emit(self, p):
        if p["topic"].startswith("denied."):
            raise PermissionError("The plugin may not publish events")
        self.emitted.append((p["topic"], p["payload"]))
        return None

    def plugin_call(self, p):
        self.calls.append(p)
        return {"value": {"echo": p["payload"]}}

    def task_submit(self, p):
        self.submitted.append(p)
        return {"id": len(self.submitted), "deduped": False}


def ok(resp):
    assert "error" not in resp, resp
    return resp["result"]["value"]


def err(resp):
    assert "result" not in resp, resp
    return resp["error"]


def started(h):
    return h.wait(lambda: h.notifications_of("started"), what="`started`")[0]


def logs(h, level=None):
    return [n["message"] for n in h.notifications_of("log") if level in (None, n["level"])]


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def compat(tmp_path):
    """Starts a runner: ``compat(package, config, model=..., ...)`` → (host, model), started."""
    hosts = []
    packages = {}

    def start(package, config, *, model=None, data=None, name="compat-test", env=None,
              params=None):
        model = model if model is not None else HostModel()
        data = data if data is not None else tmp_path / "data"
        data.mkdir(exist_ok=True)
        packages.setdefault(package, tree(package))
        h = FakeHost([sys.executable, "-m", "plugd.compat", json.dumps(config)], cwd=package,
                     data_dir=data, name=name, env={"PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
        h.request_handler = lambda msg: model.handle(h, msg)
        hosts.append(h)
        h.handshake(params=params)
        assert started(h) == {}, h.stderr
        return h, model

    yield start
    for h in hosts:
        if h.proc.poll() is None:  # a clean stop, so the runner removes its shadow root
            h.notify("shutdown")
            h.exit_code()
        h.kill()
        assert not h.errors, h.errors
    for package, files in packages.items():  # the package is read-only for plugd
        assert tree(package) == files, f"{package} changed"


def stop(h):
    h.notify("shutdown")
    assert h.exit_code() == 0, h.stderr


def run_runner(config, cwd, data=None, **env):
    """The runner as a plain process (no host): for the failures before the handshake."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SDK_SRC),
                "PYTHONDONTWRITEBYTECODE": "1", "PLUGD_PLUGIN": "broken", **env}
    if data is not None:
        full_env["PLUGD_DATA_DIR"] = str(data)
    arg = config if isinstance(config, str) else json.dumps(config)
    return subprocess.run([sys.executable, "-m", "plugd.compat", arg], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=30)


# ---------------------------------------------------------------------------- Plugin.fallback


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_fallback_serves_unregistered_actions(make_host, kind):
    h = make_host(TEST_PACKAGES / "fallback_plugin.py", handshake=False, env={"FALLBACK": kind})
    hello = h.wait(lambda: h.requests and h.requests[0], what="`hello`")
    assert [a["name"] for a in hello["params"]["actions"]] == ["known"]  # not announced
    h.handshake()
    assert ok(h.call("known")) == "known"  # a registered action comes first
    got = ok(h.call("Any.Name", {"x": 1}))
    assert (got["action"], got["payload"]) == ("Any.Name", {"x": 1})
    assert got["thread"].startswith("plugd-action") == (kind == "sync")
    assert err(h.call("refuse")) == {"code": -32004, "message": "refused by the fallback",
                                     "data": {"type": "ClientError", "code": "nope",
                                              "status": 409}}


def test_without_fallback_an_unknown_action_is_still_refused(make_host):
    h = make_host("kitchen_sink.py")
    assert err(h.call("no_such_action"))["code"] == -32001


def test_one_fallback_per_plugin():
    p = Plugin()
    p.fallback(lambda action, payload: None)
    with pytest.raises(ValueError, match="registered twice"):
        p.fallback(lambda action, payload: None)
    with pytest.raises(TypeError, match="takes a function"):
        Plugin().fallback("not a function")


# ---------------------------------------------------------------------------- the runner itself


def test_config_contract():
    assert parse_config([json.dumps(XCORE_CONFIG)]) == XCORE_CONFIG
    assert parse_config([json.dumps({**XCORE_CONFIG, "env": None})]) == {
        "format": "xcore", "entry": "src/main.py", "name": "notes manager"}
    assert parse_config([json.dumps(CLASSIC_CONFIG)]) == CLASSIC_CONFIG
    assert parse_config([json.dumps(PANOPTIC_CONFIG)]) == PANOPTIC_CONFIG
    for argv, message in [
        ([], "Expected one argument, got 0"),
        (["{"], "The argument is not JSON"),
        (["[]"], "must be a JSON object, not list"),
        (['{"format": "wasm"}'], "Unknown `format` 'wasm'; hint: use one of xcore, classic, "
                                 "panoptic"),
        (['{"format": "xcore", "name": "n"}'], "The xcore config lacks `entry`"),
        (['{"format": "xcore", "name": "n", "entry": "a.py", "env": []}'],
         "`env` of the xcore config must be an object, not list"),
        (['{"format": "panoptic", "name": "n", "entry": "x"}'],
         "Unknown keys in the panoptic config: entry; known: format, name"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
            parse_config(argv)


@pytest.mark.parametrize("config, data, status, message", [
    ("not json", True, 2, "plugd.compat: The argument is not JSON"),
    ({**XCORE_CONFIG, "entry": "src/nope.py"}, True, 2,
     "plugd.compat: The entry point `src/nope.py` is not a Python file of the package"),
    ({**XCORE_CONFIG, "entry": "../xcore-notes/src/main.py"}, True, 2,
     "is not a relative path inside the package"),
    ({**CLASSIC_CONFIG, "class": "Missing"}, True, 2,
     "Module `plugin` defines no class `Missing`; hint: check `class_path` in plugin.json"),
    (XCORE_CONFIG, False, 2, "`PLUGD_DATA_DIR` is not set"),
    ({**XCORE_CONFIG, "entry": "data/notes.json"}, True, 2,
     "`data/notes.json` is in `data/`, the plugin's writable data dir"),
])
def test_a_bad_config_exits_2_with_the_reason(tmp_path, config, data, status, message):
    package = CLASSIC if isinstance(config, dict) and config["format"] == "classic" else XCORE
    run = run_runner(config, package, tmp_path if data else None)
    assert run.returncode == status, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_plugin_code_that_fails_to_import_exits_1_with_its_traceback(tmp_path):
    run = run_runner({**XCORE_CONFIG, "env": {}}, TEST_PACKAGES / "xcore-broken", tmp_path)
    assert run.returncode == 1
    assert run.stderr.startswith(
        "plugd.compat: Importing `src/main.py` failed: ModuleNotFoundError: No module named "
        "'plugd_compat_missing_module'; hint: fix the plugin's code or install what it imports")
    assert "Traceback (most recent call last)" in run.stderr


@pytest.mark.parametrize("package, config", [(XCORE, XCORE_CONFIG), (CLASSIC, CLASSIC_CONFIG),
                                             (PANOPTIC, PANOPTIC_CONFIG)])
def test_runners_announce_no_action_so_the_host_forwards_every_call(compat, package, config):
    h, _ = compat(package, config)
    hello = h.requests[0]["params"]
    assert (hello["actions"], hello["on_start"]) == ([], True)


def test_code_is_never_imported_from_the_data_dir(tmp_path):
    """Code the plugin wrote into its data dir (here planted) is not importable as `data`."""
    data = tmp_path / "data"
    (data / "evil").mkdir(parents=True)
    (data / "evil" / "__init__.py").write_text("PWNED = True\n")
    probe = tmp_path / "probe"
    (probe / "src").mkdir(parents=True)
    (probe / "src" / "main.py").write_text(
        "import data.evil\n\nclass Plugin:\n    async def handle(self, action, payload):\n"
        "        return {'status': 'ok'}\n")
    run = run_runner({**XCORE_CONFIG, "env": {}}, probe, data)
    assert run.returncode == 1, run.stderr
    assert "plugd does not import `data`: `data` is the plugin's writable data dir" in run.stderr


def test_the_shadow_root_falls_back_to_the_data_dir_without_a_temp_dir(tmp_path, monkeypatch):
    from plugd.compat import _common

    def no_temp(*args, **kwargs):
        raise OSError("No usable temporary directory found")

    monkeypatch.setattr(_common.tempfile, "mkdtemp", no_temp)
    data = tmp_path / "data"
    data.mkdir()
    (data / ".plugd-shadow").mkdir()
    (data / ".plugd-shadow" / "stale").write_text("from a previous run")
    root = _common._shadow_dir(data)
    assert root == data / ".plugd-shadow"
    assert list(root.iterdir()) == [], "rebuilt empty at every start"


def test_seeding_copies_missing_files_once(tmp_path):
    package, data = tmp_path / "pkg", tmp_path / "data"
    (package / "data" / "sub").mkdir(parents=True)
    (package / "data" / "a.json").write_text("from the package")
    (package / "data" / "sub" / "b.txt").write_text("nested")
    data.mkdir()
    (data / "a.json").write_text("already here")
    assert seed_data(package, data) is True
    assert (data / "a.json").read_text() == "already here"  # never overwritten
    assert (data / "sub" / "b.txt").read_text() == "nested"
    assert (data / SEED_MARKER).exists()
    (data / "sub" / "b.txt").unlink()
    assert seed_data(package, data) is False  # seeded once
    assert not (data / "sub" / "b.txt").exists()


# ---------------------------------------------------------------------------- xcore


@pytest.mark.parametrize("answer, result", [
    ({"status": "ok", "note": {"id": 1}, "n": 2}, {"note": {"id": 1}, "n": 2}),
    ({"status": "ok"}, {}),
    ([1, 2], [1, 2]),
    ({"no": "status"}, {"no": "status"}),
    ({"status": "pending", "x": 1}, {"status": "pending", "x": 1}),
])
def test_xcore_answers_that_are_results(answer, result):
    assert map_answer(answer) == result


@pytest.mark.parametrize("code, status", [*ERROR_STATUS.items(), ("teapot", 400), (None, 400)])
def test_xcore_errors_are_client_errors(code, status):
    answer = {"status": "error", "msg": "went wrong"}
    if code is not None:
        answer["code"] = code
    with pytest.raises(ClientError) as raised:
        map_answer(answer)
    assert (raised.value.code, raised.value.message, raised.value.status) == (
        code or "plugin_error", "went wrong", status)


def test_xcore_error_table():
    assert ERROR_STATUS == {
        "not_found": 404, "invalid": 400, "invalid_input": 400, "bad_request": 400,
        "validation_error": 400, "unauthorized": 400, "forbidden": 400, "conflict": 409,
        "already_exists": 409, "rate_limited": 429, "too_many_requests": 429, "timeout": 408,
        "unprocessable": 422}


def test_xcore_lifecycle_answers_and_errors(compat):
    h, _ = compat(XCORE, XCORE_CONFIG, model=HostModel(env={"NOTES_TITLE": "Shopping"}))
    assert ok(h.call("lifecycle")) == {"calls": ["env_variable", "on_load"]}
    listed = ok(h.call("list"))
    assert listed == {"title": "Shopping", "notes": [
        {"id": 1, "text": "Notes live in data/notes.json, beside the plugin's code."}]}
    assert err(h.call("get", {"id": 9})) == {
        "code": -32004, "message": "No note with id 9",
        "data": {"type": "ClientError", "code": "not_found", "status": 404}}
    assert err(h.call("fail")) == {
        "code": -32004, "message": "This action always fails",
        "data": {"type": "ClientError", "code": "plugin_error", "status": 400}}
    assert err(h.call("add", {}))["data"] == {"type": "ClientError", "code": "invalid_input",
                                              "status": 400}
    assert err(h.call("nope"))["data"]["code"] == "unknown_action"
    assert ok(h.call("get", {"id": 1})) == {"note": listed["notes"][0]}
    # A null payload reaches `handle` as {} (`payload.get` works), so `add` says what it needs.
    assert err(h.call("add", None))["message"] == "`add` needs a non-empty `text`"


def test_xcore_data_is_seeded_and_persists_across_a_restart(compat, tmp_path):
    model = HostModel()
    h, _ = compat(XCORE, XCORE_CONFIG, model=model)
    assert ok(h.call("add", {"text": "buy milk"})) == {"note": {"id": 2, "text": "buy milk"}}
    notes = json.loads((tmp_path / "data" / "notes.json").read_text())
    assert [n["text"] for n in notes][1:] == ["buy milk"]
    assert (tmp_path / "data" / SEED_MARKER).exists()
    stop(h)

    h2, _ = compat(XCORE, XCORE_CONFIG, model=model)
    assert [n["id"] for n in ok(h2.call("list"))["notes"]] == [1, 2]  # not seeded again
    assert ok(h2.call("lifecycle"))["calls"] == ["env_variable", "on_load", "on_unload",
                                                 "env_variable", "on_load"]


def test_xcore_env_substitution_granted_refused_and_unset(compat):
    model = HostModel(env={"NOTES_TITLE": "Work", "DB_URL": "sqlite:///n.db"},
                      refused={"SECRET"})
    config = {**XCORE_CONFIG, "env": {
        "NOTES_TITLE": "${NOTES_TITLE}", "DB": "${DB_URL}/notes?again=${DB_URL}",
        "MODE": "fast", "RETRIES": 3, "TOKEN": "${SECRET}", "HOME_DIR": "x${UNSET_ONE}y"}}
    h, _ = compat(XCORE, config, model=model)
    assert ok(h.call("env"))["env"] == {
        "NOTES_TITLE": "Work", "DB": "sqlite:///n.db/notes?again=sqlite:///n.db", "MODE": "fast",
        "RETRIES": 3, "TOKEN": "", "HOME_DIR": "xy"}
    assert model.env_asked == ["NOTES_TITLE", "DB_URL", "SECRET", "UNSET_ONE"]  # once each
    warnings = logs(h, "warning")
    assert [w for w in warnings if "SECRET" in w] == [
        "`${SECRET}` in the plugin's env is unset or not granted: it is replaced by an empty "
        "string; hint: list `SECRET` in `permissions.env` and set it on the host"]
    assert len([w for w in warnings if "UNSET_ONE" in w]) == 1
    assert not [w for w in warnings if "DB_URL" in w or "NOTES_TITLE" in w]


def test_xcore_services_argument_relative_imports_and_raw_answers(compat):
    h, model = compat(TEST_PACKAGES / "xcore-services", {**XCORE_CONFIG, "env": {}},
                      name="svc-test")
    assert ok(h.call("put", {"key": "k", "value": [1]})) == {"stored": [1]}
    assert model.kv == {"k": [1]}
    assert ok(h.call("whoami")) == {"services": ["kv", "plugd"], "plugd_name": "svc-test",
                                    "module": "xcore_plugin.helpers"}
    assert ok(h.call("plain")) == ["not", "a", "dict"]
    assert ok(h.call("other")) == {"status": "pending", "action": "other"}
    failed = err(h.call("raises"))
    assert failed == {"code": -32003, "message": "handle broke",
                      "data": {"type": "RuntimeError"}}


# ---------------------------------------------------------------------------- classic


def test_classic_lifecycle_runs_once_in_order(compat):
    h, model = compat(CLASSIC, CLASSIC_CONFIG, name="classic-hello")
    assert ok(h.call("example.lifecycle")) == ["on_load", "on_start"]
    stop(h)
    assert model.kv["classic_hello/lifecycle"] == ["on_load", "on_start", "on_stop", "on_unload"]


def test_classic_services_by_full_and_short_name_on_kv_storage(compat):
    h, model = compat(CLASSIC, CLASSIC_CONFIG, name="classic-hello",
                      env={"CLASSIC_HELLO_GREETING": "Hi"})
    assert ok(h.call("example.hello", {"name": "Ada"})) == {"greeting": "Hi, Ada!"}
    assert ok(h.call("hello")) == {"greeting": "Hi, world!"}  # no payload: the default
    assert ok(h.call("count")) == {"count": 1}
    assert ok(h.call("example.count", None)) == {"count": 2}
    assert model.kv["classic_hello/count"] == 2
    missing = err(h.call("goodbye"))
    assert missing["data"] == {"type": "ClientError", "code": "unknown_action", "status": 404}
    assert missing["message"] == ("No service `goodbye`; available: example.count, "
                                  "example.hello, example.lifecycle, example.received")
    # A dict the service cannot take as keyword arguments is its one argument.
    assert ok(h.call("example.hello", {"nom": "Ada"})) == {"greeting": "Hi, {'nom': 'Ada'}!"}


def test_classic_env_config_falls_back_to_the_plain_key_then_the_default(compat):
    h, _ = compat(CLASSIC, CLASSIC_CONFIG, name="classic-hello", env={"GREETING": "Hey"})
    assert ok(h.call("hello", {"name": "Bob"})) == {"greeting": "Hey, Bob!"}


def test_classic_publish_emits_and_reaches_local_subscribers(compat):
    h, model = compat(CLASSIC, CLASSIC_CONFIG, name="classic-hello")
    ok(h.call("hello", {"name": "Ada"}))
    assert model.emitted == [("classic.hello", {"name": "Ada"})]
    assert ok(h.call("received")) == ["classic.hello"]


def test_classic_incoming_events_reach_matching_subscribers(compat):
    h, _ = compat(CLASSIC, CLASSIC_CONFIG, name="classic-hello")
    for topic in ("classic.ping", "other.topic", "classic.deep.pong"):
        rid = h.request("event", {"topic": topic, "payload": {"from": "test"}})
        assert h.response(rid)["result"] is None
    assert ok(h.call("received")) == ["classic.ping", "classic.deep.pong"]


CLASSIC_PROBE = {"format": "classic", "module": "probe", "class": "ProbePlugin",
                 "name": "classic_probe", "version": "2.0.0"}


def test_classic_services_sync_remote_and_builtin_logger(compat):
    h, model = compat(TEST_PACKAGES / "classic-probe", CLASSIC_PROBE, name="classic-probe")
    assert ok(h.call("double", {"x": 3})) == 6  # a plain `def` (a lambda) as a service
    assert ok(h.call("probe.double")) == 2
    assert ok(h.call("relay", {"key": "k", "value": 1})) == {"echo": {"key": "k", "value": 1}}
    (call,) = model.calls  # `store.put` is no local service: plugd plugin `store`, action `put`
    assert (call["plugin"], call["action"], call["payload"]) == ("store", "put",
                                                                 {"key": "k", "value": 1})
    assert ok(h.call("log")) is True
    assert "from the probe plugin=classic_probe" in logs(h, "warning")
    assert ok(h.call("probe.meta")) == {  # metadata from plugin.json; runtime set after
        "name": "classic_probe", "version": "2.0.0", "has_runtime": True}
    ambiguous = err(h.call("meta"))
    assert ambiguous["message"] == ("`meta` is ambiguous: it may be other.meta, probe.meta; "
                                    "hint: use the full name")


def test_classic_storage_and_env_config(compat):
    h, model = compat(TEST_PACKAGES / "classic-probe", CLASSIC_PROBE, name="classic-probe",
                      env={"CLASSIC_PROBE_NUM": "7", "BAD": "seven", "FLAG": "Yes",
                           "CUSTOM_X": "custom"})
    assert ok(h.call("storage")) == [["a1", "a2"], ["a2", "b1"], "gone"]
    assert model.kv == {"probe/a2": "A2", "probe/b1": "B1"}
    assert ok(h.call("env")) == [7, 5, True, "custom"]


def test_classic_failing_subscribers_and_refused_publishing(compat):
    h, model = compat(TEST_PACKAGES / "classic-probe", CLASSIC_PROBE, name="classic-probe")
    # A subscriber that raises is logged; the others still run and the event is published.
    assert ok(h.call("publish", {"topic": "probe.x"})) == ["probe.x"]
    assert model.emitted == [("probe.x", {"n": 1})]
    assert any(m.startswith("Event handler `broken` failed on `probe.x`: ValueError")
               for m in logs(h, "error"))
    # Refused by the host: local subscribers got it, and one warning says why.
    ok(h.call("publish", {"topic": "denied.y"}))
    ok(h.call("publish", {"topic": "denied.y"}))
    refusals = [m for m in logs(h, "warning") if "denied.y" in m]
    assert refusals == ["The host refused to publish `denied.y` to other plugins (The plugin "
                        "may not publish events); local subscribers got it; hint: add `events` "
                        "to `permissions.services`"]
    # Delivered by plugd: the first failing subscriber fails the delivery.
    failed = h.response(h.request("event", {"topic": "probe.x", "payload": None}))["error"]
    assert (failed["message"], failed["data"]) == ("cannot take probe.x", {"type": "ValueError"})
    assert ok(h.call("publish", {"topic": "other"})) == ["probe.x", "probe.x"]


# ---------------------------------------------------------------------------- panoptic


def describe(h):
    return ok(h.call("panoptic.describe"))


def test_panoptic_schema_derived_by_add_action_easy(compat):
    h, _ = compat(PANOPTIC, PANOPTIC_CONFIG)
    described = describe(h)
    assert described["name"] == "panoptic demo"
    assert described["description"] == ("Demo of a Panoptic plugin: clusters a selection "
                                         "round-robin and remembers values.")
    assert described["functions"] == [
        {"name": "cluster", "hooks": ["group"],
         "description": "Splits the selected instances into groups, one after the other.",
         "input": {"type": "object", "properties": {
             "nb_clusters": {"type": "integer", "default": 2,
                             "description": "how many groups to make"}}}},
        {"name": "remember", "hooks": ["execute"],
         "description": "Stores a value under a key, as one undoable change.",
         "input": {"type": "object", "required": ["key", "value"], "properties": {
             "key": {"type": "string", "description": "the name to store it under"},
             "value": {"type": "string", "description": "the text to store"}}}},
    ]


def test_panoptic_action_result_and_params_from_plugd(compat):
    h, _ = compat(PANOPTIC, PANOPTIC_CONFIG, params={"label": "g", "threshold": 0.8})
    assert describe(h)["params"] == {"threshold": 0.8, "label": "g"}
    result = ok(h.call("cluster", {"context": {"instance_ids": [1, 2, 3, 4, 5]},
                                   "nb_clusters": 2}))
    assert result == {
        "groups": [{"ids": [1, 3, 5], "name": "g1"}, {"ids": [2, 4], "name": "g2"}],
        "notifs": [{"type": "info", "name": "cluster",
                    "message": "5 instances in 2 groups (threshold 0.8)"}]}
    h.notify("params.changed", {"params": {"label": "z"}})
    h.wait(lambda: describe(h)["params"]["label"] == "z", what="the new params")
    groups = ok(h.call("cluster", {"context": {"instance_ids": [7]}}))["groups"]
    assert groups == [{"ids": [7], "name": "z1"}, {"ids": [], "name": "z2"}]


def test_panoptic_do_and_undo_through_kv(compat):
    h, model = compat(PANOPTIC, PANOPTIC_CONFIG)
    assert ok(h.call("remember", {"context": {}, "key": "color", "value": "red"})) == {
        "value": {"commit": 1, "key": "color"}}
    assert model.kv == {"color": "red"}

    probe, model = compat(TEST_PACKAGES / "panoptic-probe", PANOPTIC_CONFIG)
    assert ok(probe.call("undo")) is None  # nothing to undo yet
    assert ok(probe.call("change", {"commit": {"puts": {"a": 1, "b": 0}}})) == 1
    assert ok(probe.call("change", {"commit": {"puts": {"a": 2}, "deletes": ["b"]}})) == 2
    assert model.kv == {"a": 2}
    assert ok(probe.call("undo")) == 2
    assert model.kv == {"a": 1, "b": 0}
    assert ok(probe.call("undo")) == 1
    assert model.kv == {}
    assert ok(probe.call("redo")) == 1
    assert model.kv == {"a": 1, "b": 0}
    assert err(probe.call("change", {"commit": ["a"]}))["message"] == (
        "`project.do` takes a dict {\"puts\": {...}, \"deletes\": [...]} in plugd, not list; "
        "Panoptic's DbCommit (database rows) is not available; see docs/migrating.md")
    assert err(probe.call("change", {"commit": {"put": {}}}))["message"] == (
        "`project.do` got unknown keys put; a commit has `puts` (key -> value) and `deletes` "
        "(keys)")


def test_panoptic_unsupported_project_api(compat):
    h, _ = compat(TEST_PACKAGES / "panoptic-probe", PANOPTIC_CONFIG)
    failed = err(h.call("instances", {"context": {"instance_ids": [1]}}))
    assert failed == {"code": -32003, "message": (
        "Panoptic's project database API (project.get_instances) is not available in plugd; "
        "see docs/migrating.md"), "data": {"type": "UnsupportedProjectAPI"}}
    state = ok(h.call("state"))
    assert state["has_db"] is False  # `hasattr` sees it missing
    assert state["log"] == ["started with data at data"]


def test_panoptic_tasks_run_in_the_plugin_then_run_if_last(compat):
    h, model = compat(TEST_PACKAGES / "panoptic-probe", PANOPTIC_CONFIG)
    assert ok(h.call("queue", {"count": 2})) == 2
    h.wait(lambda: len(model.submitted) == 2, what="two `task.submit`s")
    assert model.submitted == [
        {"task": "panoptic.task", "payload": {"ref": 1, "name": "probe 0"}, "key": "probe",
         "priority": True, "max_attempts": 1},
        {"task": "panoptic.task", "payload": {"ref": 2, "name": "probe 1"}, "key": "probe",
         "max_attempts": 1}]
    for number, submitted in enumerate(model.submitted, start=1):
        rid = h.request("task.run", {"id": number, "task": submitted["task"], "key": "probe",
                                     "payload": submitted["payload"], "attempt": 1})
        assert h.response(rid)["result"] is None
    rid = h.request("task.run", {"id": 3, "task": "@after_last", "key": "probe",
                                 "payload": {"key": "probe"}, "attempt": 1})
    assert h.response(rid)["result"] is None
    assert ok(h.call("state"))["log"][1:] == [
        "run 0 (blocking part in another thread: True)",
        "run 1 (blocking part in another thread: True)",
        "last after 1"]
    # A task whose object is gone (queued by an earlier process) fails with the reason.
    rid = h.request("task.run", {"id": 4, "task": "panoptic.task", "payload": {"ref": 99},
                                 "attempt": 1})
    failed = h.response(rid)["error"]
    assert failed["data"]["type"] == "LookupError"
    assert "queued by an earlier process of this plugin" in failed["message"]


def test_panoptic_parameters_context_and_result_conversion(compat, tmp_path):
    h, _ = compat(TEST_PACKAGES / "panoptic-probe", PANOPTIC_CONFIG)
    functions = {f["name"]: f for f in describe(h)["functions"]}
    assert functions["typed"]["input"] == {"type": "object", "required": ["mode"], "properties": {
        "mode": {"enum": ["fast", "slow"], "description": "how fast"},
        "folder": {"type": "string", "default": "in", "description": "where to look"},
        "flag": {"type": "boolean", "default": False},
        "ratio": {"type": "number", "default": 1.5}}}  # `tags: list` has no input
    assert functions["custom"] == {"name": "custom", "hooks": ["execute"],
                                   "description": "Given by hand",
                                   "input": {"type": "object", "properties": {}}}
    assert ok(h.call("typed", {"mode": "slow", "folder": "imgs", "flag": True})) == {
        "value": {"mode": "slow", "folder": "imgs", "flag": True, "ratio": 1.5,
                  "types": ["Mode", "PosixPath"]},
        "notifs": [{"type": "warning", "message": "typed", "functions": [
            {"function": "probe.typed", "context": {"instance_ids": [1], "ui_inputs": {}}}]}]}
    assert (tmp_path / "data" / "probe.txt").read_text() == "imgs"  # data_path is the data dir
    assert ok(h.call("kwargs", {"context": {"group_name": "g", "ui_inputs": {"a": 1}},
                                "b": 2})) == {"extra": {"b": 2}, "group": "g", "ui": {"a": 1}}
    assert ok(h.call("sync", {"x": 4})) == 8
    assert ok(h.call("custom")) == "custom"
    for payload, message in [
        ({"mode": "medium"}, "`mode` of `typed` is 'medium', not one of 'fast', 'slow'"),
        ({}, "`typed` needs `mode` beside `context`"),
        ({"mode": "fast", "speed": 1}, "`typed` has no parameter `speed`; it takes: mode, "
                                       "folder, flag, ratio, tags"),
        ({"mode": "fast", "context": {"instances": []}},
         "`context` of `typed` has unknown fields instances; known: instance_ids, "
         "property_ids, group_name, file, text, ui_inputs"),
        ([1], "The payload of `typed` must be an object {\"context\": {...}, ...parameters}"),
    ]:
        failed = err(h.call("typed", payload))
        assert (failed["message"], failed["data"]) == (message, {
            "type": "ClientError", "code": "bad_payload", "status": 400})
    unknown = err(h.call("nope"))
    assert unknown["data"]["status"] == 404
    assert unknown["message"] == ("No action `nope`; available: change, custom, instances, "
                                  "kwargs, queue, redo, state, sync, typed, undo")

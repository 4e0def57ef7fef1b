"""Replays the golden frames of `crates/plugd-protocol/tests/golden` through the SDK.

The Rust side encodes every frame kind into those files (`cargo test -p plugd-protocol`); here the
host → plugin frames are sent to a real SDK plugin byte for byte, and the SDK's plugin → host
frames are compared with the files. Neither side can change the wire format without the other's
tests failing.
"""

import json
from pathlib import Path

import pytest

from conftest import PLUGINS, ROOT

GOLDEN = ROOT / "crates" / "plugd-protocol" / "tests" / "golden"


def golden(name):
    return json.loads((GOLDEN / f"{name}.json").read_text())


def raw(name):
    return (GOLDEN / f"{name}.json").read_bytes()


def without_id(frame):
    return {k: v for k, v in frame.items() if k != "id"}


def test_every_golden_file_is_replayed_here():
    replayed = {"hello", "initialize", "call", "result", "ping", "pong", "error",
                "client_error", "log", "progress", "emit", "emit_result", "emit_refused",
                "event", "cancel", "shutdown", "call_chain", "params_changed", "result_full",
                "service_error", "event_result", "event_error", "progress_task", "task_run",
                "task_result", "task_retry", "task_cancelled", "task_after_last",
                "hello_on_start", "started", "started_error",
                "hello_http_handoff", "initialize_http"}  # replayed in test_asgi.py
    replayed |= {name for name, _ in SERVICES} | {a for _, answers in SERVICES for a in answers}
    assert {p.stem for p in GOLDEN.glob("*.json")} == replayed


@pytest.fixture
def golden_host(make_host):
    h = make_host(PLUGINS / "golden_plugin.py", handshake=False, name="hello")
    hello = h.wait(lambda: h.requests and h.requests[0], what="`hello`")
    want = golden("hello")
    assert hello["id"] == want["id"] == 1
    assert hello["method"] == want["method"]
    assert hello["params"]["protocol"] == want["params"]["protocol"]
    assert hello["params"]["sdk"].startswith("python/")
    assert want["params"]["actions"][0] in hello["params"]["actions"]
    h.send_raw(raw("initialize"))
    return h


@pytest.mark.parametrize("hooks, want", [("ok", "started"), ("fail", "started_error")])
def test_hello_on_start_and_started(make_host, hooks, want):
    # A plugin with `on_start` hooks says so in `hello` (the plain `hello` above does not), and
    # sends `started` after the `initialize` answer: `{}`, or the first hook's failure.
    assert "on_start" not in golden("hello")["params"]
    h = make_host(PLUGINS / "lifecycle_plugin.py", handshake=False, name="hello",
                  env={"HOOKS": hooks})
    hello = h.wait(lambda: h.requests and h.requests[0], what="`hello`")
    golden_hello = golden("hello_on_start")
    assert hello["id"] == golden_hello["id"]
    assert {k: hello["params"][k] for k in ("protocol", "on_start")} == {
        k: golden_hello["params"][k] for k in ("protocol", "on_start")}
    h.send_raw(raw("initialize"))
    started = h.wait(lambda: [n for n in h.notifications if n["method"] == "started"],
                     what="`started`")
    assert started == [golden(want)]


def test_initialize_is_applied(golden_host):
    init = golden("initialize")["result"]
    state = golden_host.call("state")["result"]["value"]
    assert state["params"] == init["params"]
    assert state["data_dir"] == init["data_dir"]
    assert state["services"] == init["services"]
    assert state["limits"] == init["limits"]
    assert state["workers"] == init["limits"]["concurrency"]


def test_call_result_and_ping(golden_host):
    golden_host.send_raw(raw("call"))
    assert golden_host.response(golden("call")["id"]) == golden("result")
    golden_host.send_raw(raw("ping"))
    assert golden_host.response(golden("ping")["id"]) == golden("pong")


def test_errors(golden_host):
    assert without_id(golden_host.call("fail")) == without_id(golden("error"))
    assert without_id(golden_host.call("lookup")) == without_id(golden("client_error"))


def test_log_and_progress(golden_host):
    rid = golden_host.start_call("chatty")
    golden_host.response(rid)
    log = golden_host.wait_notification("log", lambda p: p["message"] == "careful")
    want = golden("log")
    assert set(log) == set(want["params"])
    assert {**log, "call": want["params"]["call"]} == want["params"]
    progress = golden_host.wait_notification("progress", lambda p: p.get("call") == rid)
    assert {**progress, "call": golden("progress")["params"]["call"]} == golden("progress")["params"]


@pytest.mark.parametrize("answer, value", [("emit_result", {"emitted": True}),
                                           ("emit_refused", {"refused": "not_granted"})])
def test_emit_request_and_its_answers(golden_host, answer, value):
    def handler(msg):
        if msg["method"] == "emit":
            reply = golden(answer)
            reply["id"] = msg["id"]
            golden_host.send(reply)
    golden_host.request_handler = handler
    resp = golden_host.call("announce")
    assert resp["result"]["value"] == value
    emit = [r for r in golden_host.requests if r["method"] == "emit"][0]
    assert without_id(emit) == without_id(golden("emit"))


def test_event(golden_host):
    golden_host.send_raw(raw("event"))
    assert golden_host.response(golden("event")["id"]) == golden("event_result")
    event = golden("event")["params"]
    assert golden_host.call("state")["result"]["value"]["seen"] == [[event["topic"], event["payload"]]]


def test_event_that_raises(golden_host):
    event = golden("event")
    rid = golden_host.request("event", {**event["params"], "topic": "bad.image"})
    assert without_id(golden_host.response(rid)) == without_id(golden("event_error"))


def test_task_run_its_progress_and_result(golden_host):
    golden_host.send_raw(raw("task_run"))
    assert golden_host.response(golden("task_run")["id"]) == golden("task_result")
    progress = golden_host.wait_notification("progress", lambda p: "task" in p)
    assert progress == golden("progress_task")["params"]
    assert progress["task"] == golden("task_run")["params"]["id"]


def task_run_as(name):
    """The golden `task_run` frame, for the task ``name``."""
    frame = golden("task_run")
    frame["params"]["task"] = name
    return frame


def test_task_retry(golden_host):
    golden_host.send(task_run_as("flaky"))
    assert golden_host.response(golden("task_run")["id"]) == golden("task_retry")


def test_task_cancelled(golden_host):
    golden_host.send(task_run_as("sleepy"))
    task_id = golden("task_run")["params"]["id"]
    golden_host.wait_notification("progress", lambda p: p.get("task") == task_id)
    golden_host.notify("cancel", {"id": golden("task_run")["id"]})
    assert golden_host.response(golden("task_run")["id"]) == golden("task_cancelled")


def test_task_after_last(golden_host):
    golden_host.send_raw(raw("task_after_last"))
    assert golden_host.response(golden("task_after_last")["id"])["result"] == {
        "rebuilt": "index", "attempt": 1}
    other = golden("task_after_last")
    other["id"] += 1
    other["params"]["key"] = other["params"]["payload"]["key"] = "other"
    golden_host.send(other)
    assert golden_host.response(other["id"])["result"] is None  # no hook for `other`


def test_cancel_and_shutdown(golden_host):
    rid = golden("cancel")["params"]["id"]
    golden_host.request("call", {"action": "wait", "payload": None, "deadline_ms": 60000}, id=rid)
    golden_host.wait_notification("progress", lambda p: p.get("call") == rid)
    golden_host.send_raw(raw("cancel"))
    golden_host.wait(lambda: golden_host.call("state")["result"]["value"]["cancelled"],
                     what="the cancellation")
    assert rid not in golden_host.responses
    golden_host.send_raw(raw("shutdown"))
    assert golden_host.exit_code() == 0


def answer_with(h, *answers):
    """Answers the plugin's requests (other than `hello`) with these golden answers in turn."""
    queue = list(answers)

    def handler(msg):
        reply = queue.pop(0)
        reply["id"] = msg["id"]
        h.send(reply)
    h.request_handler = handler


def host_requests(h):
    return [r for r in h.requests if r["method"] != "hello"]


# Each host service: the golden request the SDK must send, and the golden answers it is replayed
# against, with what the SDK method returns for each.
SERVICES = [
    ("kv_get", {"kv_get_result": {"w": 640}, "kv_get_missing": "absent"}),
    ("kv_set", {"kv_set_result": 7}),
    ("kv_delete", {"kv_delete_result": 8}),
    ("kv_commit", {"kv_commit_result": 9}),
    ("kv_undo", {"kv_undo_result": 9}),
    ("kv_redo", {"kv_redo_result": None}),
    ("params_get", {"params_get_result": {"quality": 90, "batch_size": 8}}),
    ("service_call", {"service_call_result": {"rows": [[1]]}}),
    ("env_get", {"env_get_result": 10000, "env_get_missing": "unset"}),
    ("kv_list", {"kv_list_result": [["img/a", 1], ["img/b", 2]]}),
    ("plugin_call", {"plugin_call_result": None}),
    ("task_submit", {"task_submit_result": 12}),
]


@pytest.mark.parametrize("request_name, answer, got", [
    (name, answer, got) for name, answers in SERVICES if name not in ("kv_list", "plugin_call")
    for answer, got in answers.items()])
def test_host_services(golden_host, request_name, answer, got):
    answer_with(golden_host, golden(answer))
    assert ok_value(golden_host.call("use", request_name)) == {"got": got}
    (req,) = host_requests(golden_host)
    assert without_id(req) == without_id(golden(request_name))


def ok_value(resp):
    assert "error" not in resp, resp
    return resp["result"]["value"]


def test_kv_list_pages_through_next(golden_host):
    first_page = {"jsonrpc": "2.0", "id": 0,
                  "result": {"items": [{"key": "img/a", "value": 1}], "next": "img/a"}}
    answer_with(golden_host, first_page, golden("kv_list_result"))
    assert ok_value(golden_host.call("use", "kv_list")) == {"got": [["img/a", 1], ["img/b", 2]]}
    first, second = host_requests(golden_host)
    assert first["params"] == {"prefix": "img/"}
    assert without_id(second) == without_id(golden("kv_list"))


def test_a_service_error_carries_its_code(golden_host):
    answer_with(golden_host, golden("service_error"))
    want = golden("service_error")["error"]
    assert ok_value(golden_host.call("use", "kv_commit")) == {
        "code": want["data"]["code"], "message": want["message"]}


def test_plugin_call_carries_the_chain_and_what_is_left_of_the_deadline(golden_host):
    answer_with(golden_host, golden("plugin_call_result"))
    golden_host.send_raw(raw("call_chain"))
    resp = golden_host.response(golden("call_chain")["id"])
    # `relay` returns the callee's whole result object (`full=True`).
    assert resp["result"]["value"] == golden("plugin_call_result")["result"]
    (req,) = host_requests(golden_host)
    want = golden("plugin_call")
    left = req["params"]["context"].pop("deadline_ms")
    assert 0 < left <= golden("call_chain")["params"]["deadline_ms"]
    want["params"]["context"].pop("deadline_ms")
    assert without_id(req) == without_id(want)


def test_result_full_has_the_documented_shape(golden_host):
    assert without_id(golden_host.call("full")) == without_id(golden("result_full"))


def test_params_changed(golden_host):
    golden_host.send_raw(raw("params_changed"))
    new = golden("params_changed")["params"]["params"]
    golden_host.wait_notification("log", lambda p: p["message"] == f"params now {sorted(new)}")
    assert golden_host.call("state")["result"]["value"]["params"] == new

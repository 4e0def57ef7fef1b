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
                "event", "cancel", "shutdown"}
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
                                           ("emit_refused", {"refused": -32020})])
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
    event = golden("event")["params"]
    golden_host.wait(lambda: golden_host.call("state")["result"]["value"]["seen"], what="the event")
    assert golden_host.call("state")["result"]["value"]["seen"] == [[event["topic"], event["payload"]]]


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

"""The SDK end to end: a real plugin process driven by a fake host over a socket pair on fd 3."""

import json
import sys
import time

import pytest

from fakehost import FakeHost, python_argv
from conftest import PLUGINS


def ok(resp):
    assert "error" not in resp, resp
    return resp["result"]


def err(resp):
    assert "result" not in resp, resp
    return resp["error"]


# -- handshake and basics


def test_hello_announces_protocol_sdk_and_actions(make_host):
    h = make_host(handshake=False)
    hello = h.handshake()
    assert hello["id"] == 1
    p = hello["params"]
    assert p["protocol"] == 1
    assert p["sdk"].startswith("python/")
    actions = {a["name"]: a["description"] for a in p["actions"]}
    assert actions["greet"] == "Greets someone"
    assert actions["echo"] == "Returns the payload."  # first paragraph of the docstring
    assert "fail.later" in actions


def test_initialize_sets_name_version_params_data_dir(make_host, tmp_path):
    h = make_host(params={"quality": 80}, extra={"version": "1.2.3"})
    info = ok(h.call("info"))["value"]
    assert info["name"] == "test"
    assert info["version"] == "1.2.3"
    assert info["params"] == {"quality": 80}
    assert info["data_dir"] == str(tmp_path / "data")
    assert info["services"] == ["kv"]
    assert info["workers"] == 16


def test_thread_pool_follows_concurrency_limit(make_host):
    limits = {"call_timeout_ms": 5000, "concurrency": 4, "memory": 1 << 28, "cpu_ms": 10000}
    h = make_host(extra={"limits": limits})
    info = ok(h.call("info"))["value"]
    assert info["workers"] == 4
    assert info["limits"] == limits


def test_plugin_toml_is_not_read_for_limits(make_host, tmp_path):
    # `initialize.limits` is the only source: a `plugin.toml` in the working directory is not
    # scanned (without limits the pool has its default size).
    (tmp_path / "plugin.toml").write_text("[limits]\nconcurrency = 3\n")
    h = make_host(cwd=tmp_path)
    assert ok(h.call("info"))["value"]["workers"] == 16


def test_call_returns_value(host):
    assert ok(host.call("greet", {"name": "Ada"})) == {
        "value": {"message": "Hello, Ada!", "tags": []}}
    assert ok(host.call("echo", [1, "two", None])) == {"value": [1, "two", None]}
    assert ok(host.call("echo", None)) == {"value": None}


def test_action_result_shape(host):
    assert ok(host.call("rich")) == {
        "value": {"n": 1},
        "notifications": [{"level": "warning", "title": "Careful", "message": "It is hot",
                           "data": {"t": 40}}],
        "groups": [{"id": "g", "name": "pair", "members": [1, 2], "score": 0.5},
                   {"key": "k", "name": "rest", "members": ["ab"], "scores": {"size": 0.1}}],
    }
    assert ok(host.call("plain_result")) == {"value": [1, 2]}  # empty lists are omitted


def test_unknown_action(host):
    e = err(host.call("nope", {}))
    assert e["code"] == -32001
    assert e["data"] == {"action": "nope"}
    assert "`nope`" in e["message"]


def test_ping(host):
    rid = host.request("ping")
    assert host.response(rid)["result"] == "pong"


def test_unknown_method_and_notification(host):
    rid = host.request("frobnicate", {})
    e = err(host.response(rid))
    assert e["code"] == -32601
    host.notify("frobnicate", {})  # ignored
    host.send({"jsonrpc": "2.0", "id": 5, "method": "call", "params": "not an object"})
    assert err(host.response(5))["code"] == -32602
    assert ok(host.call("echo", 1)) == {"value": 1}


def test_garbage_from_host_is_ignored(host):
    host.sock.sendall(b"this is not json\n[1,2]\n\n")
    assert ok(host.call("echo", "still here")) == {"value": "still here"}
    # stderr is drained by another thread: the reply can arrive before the line is read.
    host.wait(lambda: "not a JSON object" in host.stderr or "Ignored" in host.stderr,
              what="stderr")


# -- errors


def test_exception_becomes_action_failed(host):
    e = err(host.call("fail"))
    assert e == {"code": -32003, "message": "boom", "data": {"type": "ValueError"}}
    log = host.wait_notification("log", lambda p: "boom" in p["message"])
    assert log["level"] == "error"
    assert "Traceback" in log["message"]


def test_exception_after_suspending(host):
    e = err(host.call("fail.later"))
    assert e["code"] == -32003
    assert e["data"] == {"type": "KeyError"}
    assert e["message"] == "'later'"


def test_client_error_carries_code_and_status(host):
    e = err(host.call("lookup", "cat.png"))
    assert e == {"code": -32004, "message": "no such image: cat.png",
                 "data": {"type": "ClientError", "code": "not_found", "status": 404}}
    # A client error is the plugin's answer, not a failure: no traceback is logged.
    assert ok(host.call("echo", 1))
    assert not [p for p in host.notifications_of("log") if "cat.png" in p["message"]]


def test_client_error_refuses_a_status_outside_4xx():
    from plugd import ClientError
    with pytest.raises(ValueError, match="400..=499"):
        ClientError("oops", "server side", status=500)
    with pytest.raises(ValueError, match="non-empty string"):
        ClientError("", "no code")
    assert ClientError("bad", "x").status == 400


def test_exception_code_is_passed_on(host):
    e = err(host.call("coded"))
    assert e["data"] == {"type": "CodedError", "code": "E_QUOTA"}


def test_sync_exception(host):
    e = err(host.call("sync_fail"))
    assert e == {"code": -32003, "message": "sync boom", "data": {"type": "RuntimeError"}}


def test_result_that_is_not_json(host):
    e = err(host.call("not_json"))
    assert e["code"] == -32003
    assert e["data"]["type"] == "TypeError"
    assert "JSON" in e["message"]


@pytest.mark.parametrize("payload, loc, kind", [
    ({}, ["name"], "missing"),
    ({"name": 5}, ["name"], "string_type"),
    ({"name": "Ada", "times": "x"}, ["times"], "int_type"),
    ({"name": "Ada", "times": True}, ["times"], "int_type"),
    ({"name": "Ada", "tags": ["a", 1]}, ["tags", 1], "string_type"),
    ("Ada", [], "dict_type"),
    (None, [], "dict_type"),
])
def test_input_model_rejects_bad_payload(host, payload, loc, kind):
    e = err(host.call("greet", payload))
    assert e["code"] == -32002
    assert "`greet`" in e["message"]
    assert {"loc": loc, "type": kind} == {k: e["data"]["errors"][0][k] for k in ("loc", "type")}


def test_input_model_accepts_optional_fields(host):
    assert ok(host.call("greet", {"name": "Ada", "times": 2, "tags": ["x"], "title": "Dr",
                                  "unknown": "ignored"}))["value"] == {
        "message": "Hello, Dr Ada! Hello, Dr Ada!", "tags": ["x"]}


# -- concurrency


def test_fifty_concurrent_calls_answer_in_the_order_they_finish(host):
    # Each call waits on its own gate; opening the gates last-first decides the order, not
    # sleep lengths.
    ids = [host.start_call("gate", i) for i in range(50)]
    for i in reversed(range(50)):
        assert ok(host.call("open_gate", i)) == {"value": None}
        assert ok(host.response(ids[i])) == {"value": i}
    order = [json.loads(line)["id"] for line in host.raw_lines
             if b'"result"' in line and json.loads(line).get("id") in ids]
    assert order == list(reversed(ids))


def test_pipelined_calls_in_one_write(host):
    frames = "".join(
        json.dumps({"jsonrpc": "2.0", "id": 1000 + i, "method": "call",
                    "params": {"action": "echo", "payload": i, "deadline_ms": 5000}}) + "\n"
        for i in range(200))
    host.sock.sendall(frames.encode())
    for i in range(200):
        assert ok(host.response(1000 + i)) == {"value": i}


def test_large_payloads_cross_buffer_boundaries(host):
    big = "x" * (3 * 1024 * 1024)
    assert ok(host.call("echo", {"big": big}))["value"]["big"] == big
    assert ok(host.call("echo", 1)) == {"value": 1}


def test_print_never_corrupts_frames(host):
    ids = [host.start_call("sleep", {"s": 0.02, "i": i}) for i in range(20)]
    pid = host.start_call("printer")
    ids += [host.start_call("sleep", {"s": 0.001, "i": i}) for i in range(20, 40)]
    assert ok(host.response(pid)) == {"value": "printed"}
    assert [ok(host.response(r))["value"] for r in ids] == list(range(40))
    host.wait(lambda: "after" in host.stdout, what="stdout")
    assert "x" * 70000 in host.stdout
    assert '"result":"fake"' in host.stdout
    host.wait(lambda: "to stderr" in host.stderr, what="stderr")
    assert not host.errors


def test_sync_handler_runs_in_a_thread(host):
    v = ok(host.call("sync_thread"))["value"]
    assert v["thread"].startswith("plugd-action")
    assert v["main"] is False


# -- async paths: immediate, suspending, cancellation


def test_handler_that_yields_once(host):
    assert ok(host.call("yield_once")) == {"value": "yielded"}


def test_handler_naming_current_task_runs_inside_a_task(host):
    assert ok(host.call("current_task"))["value"] == {"before": True, "after": True}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is 3.11+")
def test_handler_using_a_task_group(host):
    assert ok(host.call("taskgroup")) == {"value": 3}


def test_eager_false_starts_in_a_task(host):
    assert ok(host.call("lazy")) == {"value": True}


def test_concurrent_calls_keep_their_own_call_id(host):
    ids = {host.start_call("multi_progress", i): i for i in range(30)}
    for rid, i in ids.items():
        assert ok(host.response(rid)) == {"value": i}
    prog = host.notifications_of("progress")
    assert len(prog) == 90
    for p in prog:
        assert p["message"] == str(ids[p["call"]])


def test_deadline_cancels_a_suspended_handler_without_reply(host):
    rid = host.start_call("slow", {"s": 10, "tag": "deadline"}, deadline_ms=100)
    assert host.wait_notification("emit", lambda p: p["topic"] == "cancelled")["payload"] == {
        "tag": "deadline"}
    assert ok(host.call("echo", 1)) == {"value": 1}
    assert rid not in host.responses  # the host already gave up: no late reply


def started(host, rid):
    host.wait_notification("progress", lambda p: p.get("call") == rid and p.get("message") == "started")


def test_cancel_notification_cancels_a_call_without_reply(host):
    rid = host.start_call("slow", {"s": 10, "tag": "explicit"})
    started(host, rid)
    host.notify("cancel", {"id": rid})
    host.wait_notification("emit", lambda p: p["payload"] == {"tag": "explicit"})
    assert ok(host.call("echo", 1)) == {"value": 1}
    assert rid not in host.responses  # the host gave up on it: no reply


def test_cancel_in_the_same_write_as_the_call(host):
    frames = [
        {"jsonrpc": "2.0", "id": 77, "method": "call",
         "params": {"action": "slow", "payload": {"s": 10, "tag": "same"}, "deadline_ms": 5000}},
        {"jsonrpc": "2.0", "method": "cancel", "params": {"id": 77}},
    ]
    host.sock.sendall("".join(json.dumps(f) + "\n" for f in frames).encode())
    host.wait_notification("emit", lambda p: p["payload"] == {"tag": "same"})
    assert ok(host.call("echo", 2)) == {"value": 2}
    assert 77 not in host.responses


def test_cancel_of_an_unknown_or_finished_call_is_ignored(host):
    rid = host.start_call("echo", 5)
    assert ok(host.response(rid)) == {"value": 5}
    host.notify("cancel", {"id": rid})
    host.notify("cancel", {"id": 123456})
    assert ok(host.call("echo", 6)) == {"value": 6}


def asked(host, tag, n):
    """The `n`-th `test.ask` request (from 1) with `tag`, once it has arrived."""
    def find():
        found = [r for r in host.requests
                 if r["method"] == "test.ask" and r["params"] == {"tag": tag}]
        return found[n - 1] if len(found) >= n else None
    return host.wait(find, what=f"test.ask #{n} of {tag}")


@pytest.mark.parametrize("sleep", [False, True])
def test_a_handler_waiting_on_the_host_resumes_with_each_answer(host, sleep):
    rid = host.start_call("on_host", {"tag": "seq", "asks": 3, "sleep": sleep})
    for n in range(1, 4):
        req = asked(host, "seq", n)
        host.send({"jsonrpc": "2.0", "id": req["id"], "result": {"n": n}})
    assert ok(host.response(rid)) == {"value": [{"n": 1}, {"n": 2}, {"n": 3}]}


def test_a_host_error_reaches_the_handler_waiting_on_it(host):
    rid = host.start_call("on_host", {"tag": "err"})
    req = asked(host, "err", 1)
    host.send({"jsonrpc": "2.0", "id": req["id"],
               "error": {"code": -32022, "message": "No", "data": {"code": "conflict"}}})
    e = err(host.response(rid))
    assert e["code"] == -32003
    assert e["data"] == {"type": "HostError", "code": "conflict"}


def test_cancel_reaches_a_handler_waiting_on_the_host(host):
    rid = host.start_call("on_host", {"tag": "held"})
    req = asked(host, "held", 1)
    host.notify("cancel", {"id": rid})
    host.wait_notification("emit", lambda p: p["payload"] == {"tag": "held"})
    # The answer after the cancellation goes nowhere; the plugin serves on.
    host.send({"jsonrpc": "2.0", "id": req["id"], "result": {"late": True}})
    assert ok(host.call("echo", 1)) == {"value": 1}
    assert rid not in host.responses


def test_deadline_reaches_a_handler_waiting_on_the_host(host):
    rid = host.start_call("on_host", {"tag": "late"}, deadline_ms=150)
    asked(host, "late", 1)
    host.wait_notification("emit", lambda p: p["payload"] == {"tag": "late"})
    assert ok(host.call("echo", 2)) == {"value": 2}
    assert rid not in host.responses


def test_handler_raising_cancelled_error(host):
    e = err(host.call("raise_cancel"))
    assert e["code"] == -32003
    assert e["data"]["type"] == "CancelledError"


# -- notifications to the host


def test_progress_carries_the_call_id(host):
    rid = host.start_call("progress")
    assert ok(host.response(rid)) == {"value": "ok"}
    prog = [p for p in host.notifications_of("progress") if p.get("call") == rid]
    assert prog == [{"call": rid, "fraction": 0.5, "message": "half"},
                    {"call": rid, "fraction": 1.0, "message": "done"}]
    sid = host.start_call("sync_progress")
    assert ok(host.response(sid)) == {"value": "ok"}
    assert {"call": sid, "fraction": 0.25, "message": "quarter"} in host.notifications_of("progress")


def test_log_records_become_log_notifications(host):
    rid = host.start_call("logme", "x")
    assert ok(host.response(rid)) == {"value": None}
    warn = host.wait_notification("log", lambda p: p["message"] == "careful x")
    assert warn == {"level": "warning", "message": "careful x", "logger": "test", "call": rid}
    info = host.wait_notification("log", lambda p: p["message"] == "root info")
    assert info["level"] == "info" and info["logger"] == "root"
    assert not [p for p in host.notifications_of("log") if p["message"] == "a debug line"]


def test_events_exact_and_prefix(host):
    host.notify("event", {"topic": "image.imported", "payload": {"id": 7}})
    host.notify("event", {"topic": "image.deleted", "payload": None})
    host.notify("event", {"topic": "other.thing", "payload": None})
    host.wait(lambda: len(host.notifications_of("emit")) >= 3, what="3 emits")
    assert ok(host.call("echo", 0))  # the events were handled before this call
    seen = sorted((p["payload"]["topic"], p["payload"]["by"])
                  for p in host.notifications_of("emit") if p["topic"] == "seen")
    assert seen == [("image.deleted", "prefix"), ("image.imported", "exact"),
                    ("image.imported", "prefix")]


def test_event_handler_exception_is_logged_not_fatal(host):
    host.notify("event", {"topic": "boom", "payload": {}})
    log = host.wait_notification("log", lambda p: "event boom" in p["message"])
    assert log["level"] == "error"
    assert "`boom`" in log["message"]
    assert host.response(host.request("ping"))["result"] == "pong"


def test_params_changed(host):
    host.notify("params.changed", {"params": {"quality": 10}})
    p = host.wait_notification("emit", lambda p: p["topic"] == "params")["payload"]
    assert p == {"params": {"quality": 10}, "seen": {"quality": 10}}
    assert ok(host.call("info"))["value"]["params"] == {"quality": 10}


# -- requests to the host


def answer_kv(h):
    def handler(msg):
        if msg["method"] == "kv.get":
            h.send({"jsonrpc": "2.0", "id": msg["id"], "result": {"value": 42}})
        else:
            h.send({"jsonrpc": "2.0", "id": msg["id"],
                    "error": {"code": -32020, "message": "Service `tasks` is not granted"}})
    h.request_handler = handler


def test_plugin_request_round_trip(host):
    answer_kv(host)
    assert ok(host.call("ask_host", {"method": "kv.get", "params": {"key": "k"}}))["value"] == {
        "ok": {"value": 42}}
    req = [r for r in host.requests if r["method"] == "kv.get"][0]
    assert req["params"] == {"key": "k"}
    assert isinstance(req["id"], int) and req["id"] > 1
    # Without `data.code` (an older host) the code follows the JSON-RPC code.
    assert ok(host.call("ask_host", {"method": "task.submit"}))["value"] == {
        "code": "not_granted", "message": "Service `tasks` is not granted"}


def refuse_emits(h, prefix):
    def handler(msg):
        if msg["method"] == "emit" and msg["params"]["topic"].startswith(prefix):
            h.send({"jsonrpc": "2.0", "id": msg["id"], "error": {
                "code": -32020, "message": "Service `events` is not granted"}})
        else:
            h.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
    h.request_handler = handler


def test_emit_is_a_request_and_a_refusal_raises(host):
    refuse_emits(host, "denied.")
    assert ok(host.call("announce", {"topic": "ok.done", "payload": 1}))["value"] == {
        "emitted": "ok.done"}
    req = [r for r in host.requests if r["method"] == "emit"][0]
    assert req["params"] == {"topic": "ok.done", "payload": 1}
    assert ok(host.call("announce", {"topic": "denied.x"}))["value"] == {
        "refused": "not_granted", "message": "Service `events` is not granted"}
    assert ok(host.call("announce_sync", {"topic": "denied.y"}))["value"] == {
        "refused": "not_granted"}
    assert ok(host.call("announce_sync", {"topic": "ok.sync"}))["value"] == {"emitted": "ok.sync"}


def test_an_emit_not_awaited_logs_its_refusal(host):
    refuse_emits(host, "params")
    host.notify("params.changed", {"params": {"x": 2}})  # its handler emits `params`
    log = host.wait_notification("log", lambda p: "refused `emit` of `params`" in p["message"])
    assert log["level"] == "warning"


def test_plugin_request_from_a_sync_handler(host):
    answer_kv(host)
    assert ok(host.call("ask_host_sync", {"method": "kv.get"}))["value"] == {"ok": {"value": 42}}


# -- lifecycle


def test_shutdown_finishes_in_flight_calls_then_exits_0(host):
    rid = host.start_call("slow", {"s": 0.2})
    sid = host.start_call("sync_thread")
    started(host, rid)
    host.notify("shutdown")
    assert ok(host.response(rid)) == {"value": "finished"}
    assert ok(host.response(sid))
    assert host.exit_code() == 0


def test_shutdown_when_idle_exits_0(host):
    host.notify("shutdown")
    assert host.exit_code() == 0


def test_eof_exits_0(host):
    host.start_call("slow", {"s": 10})
    host.close()
    assert host.exit_code() == 0


def test_eof_does_not_wait_for_a_busy_thread(host):
    host.start_call("sync_sleep", 30)
    time.sleep(0.1)
    host.close()
    assert host.exit_code(timeout=5) == 0


def test_handshake_refusal_exits_3(make_host):
    h = make_host(refuse=True)
    assert h.exit_code() == 3
    assert "Protocol 1 is not supported" in h.stderr


def test_not_started_by_plugd_exits_2(tmp_path):
    import subprocess
    p = subprocess.run([sys.executable, str(PLUGINS / "kitchen_sink.py")], capture_output=True,
                       env={"PYTHONPATH": str(PLUGINS.parent.parent / "src")}, timeout=30)
    assert p.returncode == 2
    assert b"PLUGD_FD" in p.stderr
    assert p.stdout == b""

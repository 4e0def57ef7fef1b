"""Durable events (the `event` request), background tasks (`task.run`, `cancel`, `@after_last`)
and `plugin.submit`, end to end: a real plugin process driven by the fake host."""

import pytest

from plugd import Plugin, Retry, TaskId

from conftest import PLUGINS


def ok(resp):
    assert "error" not in resp, resp
    return resp["result"]


def err(resp):
    assert "result" not in resp, resp
    return resp["error"]


@pytest.fixture
def host(make_host):
    return make_host(PLUGINS / "tasks_plugin.py")


def seen(host):
    return ok(host.call("state"))["value"]["seen"]


def run_task(host, task, payload=None, *, task_id=12, key=None, attempt=1, deadline_ms=60000):
    params = {"id": task_id, "task": task, "payload": payload, "attempt": attempt,
              "deadline_ms": deadline_ms}
    if key is not None:
        params["key"] = key
    return host.request("task.run", params)


# -- events


def test_an_event_request_is_answered_null_after_every_matching_handler_ran(host):
    rid = host.request("event", {"topic": "image.imported", "payload": {"id": 7}})
    assert ok(host.response(rid)) is None
    # Both handlers ran before the answer (the state call comes after it).
    assert sorted(map(tuple, seen(host))) == [("async", "image.imported", {"id": 7}),
                                              ("sync", "image.imported", {"id": 7})]


def test_an_event_without_a_matching_handler_is_answered_null(host):
    assert ok(host.response(host.request("event", {"topic": "other", "payload": 1}))) is None
    assert seen(host) == []


def test_the_answer_waits_for_a_handler_that_suspends(host):
    rid = host.request("event", {"topic": "held", "payload": "g1"})
    assert seen(host) == []  # a call is served while the event's handler waits
    assert rid not in host.responses
    assert ok(host.call("open_gate", "g1"))["value"] is None
    assert ok(host.response(rid)) is None
    assert seen(host) == [["held", "held", "g1"]]


def test_a_raising_event_handler_answers_an_error_and_the_others_still_run(host):
    e = err(host.response(host.request("event", {"topic": "bad.sync", "payload": 3})))
    assert e == {"code": -32003, "message": "cannot handle 3", "data": {"type": "ValueError"}}
    assert seen(host) == [["sync-ok", "bad.sync", 3]]
    log = host.wait_notification("log", lambda p: "cannot handle 3" in p["message"])
    assert log["level"] == "error" and "`on_bad`" in log["message"]
    e = err(host.response(host.request("event", {"topic": "bad.coded", "payload": None})))
    assert e == {"code": -32003, "message": "disk full",
                 "data": {"type": "CodedError", "code": "E_DISK"}}


def test_events_are_handled_in_the_order_they_are_answered(host):
    for i in range(20):
        assert ok(host.response(host.request("event", {"topic": "image.new", "payload": i}))) \
            is None
    assert [s[2] for s in seen(host)] == list(range(20))


def test_the_notification_form_of_event_still_works_without_an_answer(host):
    host.notify("event", {"topic": "image.old", "payload": 1})
    host.wait(lambda: seen(host), what="the event")
    assert seen(host) == [["async", "image.old", 1]]
    assert all(r.get("result") is not None or "error" in r for r in host.responses.values())


def test_an_event_request_with_bad_params_is_invalid(host):
    e = err(host.response(host.request("event", {"payload": 1})))
    assert e["code"] == -32602


# -- tasks


def test_a_task_answers_its_return_value_with_the_context(host):
    rid = run_task(host, "embed", {"name": "Ada"}, task_id=41, key="index", attempt=2)
    assert ok(host.response(rid)) == {"payload": {"name": "Ada"}, "id": 41, "task": "embed",
                                      "key": "index", "attempt": 2, "cancelled": False,
                                      "has_deadline": True}
    assert ok(host.response(run_task(host, "payload_only", [1, 2]))) == [1, 2]


def test_progress_of_a_task_carries_the_task_id_not_the_request_id(host):
    rid = run_task(host, "embed", None, task_id=41)
    ok(host.response(rid))
    assert [p for p in host.notifications_of("progress") if p.get("task") == 41] == [
        {"task": 41, "fraction": 0.5, "message": "half"}, {"task": 41, "fraction": 1.0}]
    sid = run_task(host, "embed.sync", "x", task_id=42)
    value = ok(host.response(sid))
    assert value["id"] == 42 and value["thread"].startswith("plugd-task")
    assert {"task": 42, "fraction": 0.25, "message": "quarter"} in host.notifications_of(
        "progress")
    assert not [p for p in host.notifications_of("progress") if "call" in p]


def test_an_unknown_task_is_minus_32001(host):
    e = err(host.response(run_task(host, "nope")))
    assert e["code"] == -32001
    assert e["data"] == {"action": "nope"}
    assert "`nope`" in e["message"]


def test_retry_and_retryable_exceptions_ask_for_a_retry(host):
    e = err(host.response(run_task(host, "flaky", attempt=2)))
    assert e == {"code": -32003, "message": "try again (attempt 2)",
                 "data": {"type": "Retry", "code": "retry"}}
    e = err(host.response(run_task(host, "busy")))
    assert e == {"code": -32003, "message": "the GPU is busy",
                 "data": {"type": "Busy", "code": "retry"}}


def test_other_failures_fail_for_good_with_their_code(host):
    e = err(host.response(run_task(host, "broken", "plain")))
    assert e == {"code": -32003, "message": "bad input", "data": {"type": "ValueError"}}
    e = err(host.response(run_task(host, "broken", "coded")))
    assert e["data"] == {"type": "CodedError", "code": "E_DISK"}
    e = err(host.response(run_task(host, "broken", "client")))
    assert e["code"] == -32003 and e["data"] == {"type": "ClientError", "code": "not_found"}
    e = err(host.response(run_task(host, "not_json")))
    assert e["code"] == -32003 and "not JSON-serialisable" in e["message"]
    log = host.wait_notification("log", lambda p: "bad input" in p["message"])
    assert log["level"] == "error" and "`broken`" in log["message"]


def test_the_input_model_validates_a_task_payload(host):
    assert ok(host.response(run_task(host, "area", {"w": 3, "h": 4}))) == 12
    e = err(host.response(run_task(host, "area", {"w": "x"})))
    assert e["code"] == -32002 and e["data"]["errors"]


def test_bad_task_run_params_are_invalid(host):
    assert err(host.response(host.request("task.run", {"task": "embed"})))["code"] == -32602


def started(host, task_id):
    host.wait_notification("progress",
                           lambda p: p.get("task") == task_id and p.get("message") == "started")


def test_cancel_of_an_async_task_cancels_it_and_answers_cancelled(host):
    rid = run_task(host, "wait", task_id=50)
    started(host, 50)
    host.notify("cancel", {"id": rid})
    e = err(host.response(rid))
    assert e["code"] == -32003
    assert e["data"] == {"type": "CancelledError", "code": "cancelled"}
    host.wait_notification("log", lambda p: p["message"] == "task 50 stopped, cancelled=True")


def test_cancel_in_the_same_write_as_the_task_run(host):
    import json
    frames = [{"jsonrpc": "2.0", "id": 77, "method": "task.run",
               "params": {"id": 5, "task": "wait", "payload": None, "attempt": 1,
                          "deadline_ms": 60000}},
              {"jsonrpc": "2.0", "method": "cancel", "params": {"id": 77}}]
    host.sock.sendall("".join(json.dumps(f) + "\n" for f in frames).encode())
    assert err(host.response(77))["data"]["code"] == "cancelled"


def test_cancel_of_a_sync_task_sets_the_flag_and_answers_when_it_returns(host):
    rid = run_task(host, "wait.sync", "return", task_id=51)
    started(host, 51)
    host.notify("cancel", {"id": rid})
    assert ok(host.response(rid)) == {"stopped_at": "step 3", "cancelled": True}
    rid = run_task(host, "wait.sync", "raise", task_id=52)
    started(host, 52)
    host.notify("cancel", {"id": rid})
    e = err(host.response(rid))
    assert e == {"code": -32003, "message": "stopped early",
                 "data": {"type": "RuntimeError", "code": "cancelled"}}


def test_a_cancel_for_a_call_id_still_reaches_the_call(make_host):
    # The kitchen sink's `slow` action: a `cancel` that is no task's goes to the calls.
    h = make_host()
    rid = h.start_call("slow", {"s": 10, "tag": "call"})
    h.wait_notification("progress", lambda p: p.get("call") == rid)
    h.notify("cancel", {"id": rid})
    h.wait_notification("emit", lambda p: p["payload"] == {"tag": "call"})
    assert ok(h.call("echo", 1)) == {"value": 1}  # (after the host answered that `emit`)
    assert rid not in h.responses


def test_after_last_runs_the_hook_of_the_key(host):
    rid = host.request("task.run", {"id": 60, "task": "@after_last", "payload": {"key": "index"},
                                    "key": "index", "attempt": 1, "deadline_ms": 60000})
    assert ok(host.response(rid)) == {"rebuilt": "index", "task": "@after_last", "key": "index",
                                      "attempt": 1}
    assert {"task": 60, "fraction": 1.0, "message": "rebuilt"} in host.notifications_of(
        "progress")
    rid = host.request("task.run", {"id": 61, "task": "@after_last", "payload": {"key": "thumbs"},
                                    "key": "thumbs", "attempt": 1, "deadline_ms": 60000})
    assert ok(host.response(rid)) == "sync hook for thumbs"


def test_after_last_without_a_hook_for_the_key_answers_null(host):
    rid = host.request("task.run", {"id": 62, "task": "@after_last", "payload": {"key": "other"},
                                    "key": "other", "attempt": 1, "deadline_ms": 60000})
    assert ok(host.response(rid)) is None


def test_shutdown_waits_for_a_running_task_and_refuses_new_ones_as_retryable(host):
    rid = run_task(host, "wait", task_id=70)
    started(host, 70)
    host.notify("shutdown")
    e = err(host.response(run_task(host, "embed", task_id=71)))
    assert e["data"] == {"type": "ShuttingDown", "code": "retry"}
    e = err(host.response(host.request("event", {"topic": "image.x", "payload": None})))
    assert e["data"] == {"type": "ShuttingDown"}
    assert host.proc.poll() is None  # the running task keeps it alive
    host.notify("cancel", {"id": rid})
    assert err(host.response(rid))["data"]["code"] == "cancelled"
    assert host.exit_code() == 0


# -- submit


class Queue:
    """The host's `task.submit`: ids from 12, `dedupe` answers the queued task of the key."""

    def __init__(self, h):
        self.h = h
        self.submits = []
        self.queued = {}
        h.request_handler = self.handle

    def handle(self, msg):
        if msg["method"] != "task.submit":
            self.h.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
            return
        p = msg["params"]
        self.submits.append(p)
        if p.get("task") == "full":
            self.h.send({"jsonrpc": "2.0", "id": msg["id"], "error": {
                "code": -32022, "message": "The task queue is full", "data": {"code": "overloaded"}}})
            return
        key = p.get("key")
        if p.get("dedupe") and key in self.queued:
            result = {"id": self.queued[key], "deduped": True}
        else:
            result = {"id": 11 + len(self.submits), "deduped": False}
            if key is not None:
                self.queued.setdefault(key, result["id"])
        self.h.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})


def test_submit_round_trip(host):
    q = Queue(host)
    value = ok(host.call("submit", {"task": "embed", "payload": {"name": "Ada"},
                                    "options": {"key": "index", "priority": True}}))["value"]
    assert value == {"id": 12, "is_int": True, "deduped": False, "via": 12}
    assert q.submits[-1] == {"task": "embed", "payload": {"name": "Ada"}, "key": "index",
                             "priority": True}
    value = ok(host.call("submit_sync", {"task": "embed", "payload": 2, "options": {
        "key": "index", "dedupe": True, "max_attempts": 5}}))["value"]
    assert value == {"id": 12, "deduped": True}
    assert q.submits[-1] == {"task": "embed", "payload": 2, "key": "index", "dedupe": True,
                             "max_attempts": 5}
    value = ok(host.call("submit", {"task": "embed"}))["value"]
    assert value["id"] == 14 and q.submits[-1] == {"task": "embed", "payload": None}
    assert ok(host.call("submit", {"task": "full"}))["value"] == {
        "code": "overloaded", "message": "The task queue is full"}


# -- registration (no process)


def test_task_registration_checks_names_and_signatures():
    plugin = Plugin()
    with pytest.raises(ValueError, match="Invalid task name"):
        plugin.task("@after_last")(lambda p: None)
    with pytest.raises(ValueError, match="Invalid task name"):
        plugin.task("9lives")(lambda p: None)

    @plugin.task("Embed.v2")
    def one(payload):
        return payload

    with pytest.raises(ValueError, match="registered twice"):
        plugin.task("Embed.v2")(lambda p, c: None)

    @plugin.task()
    async def two(payload, ctx, *more):
        return payload

    @plugin.after_last("index")
    def hook(key, ctx):
        return key

    with pytest.raises(ValueError, match="registered twice"):
        plugin.after_last("index")(hook)
    with pytest.raises(ValueError, match="non-empty key"):
        plugin.after_last("")(hook)
    handlers = plugin._tasks.handlers
    assert (handlers["Embed.v2"].with_ctx, handlers["Embed.v2"].is_async) == (False, False)
    assert (handlers["two"].with_ctx, handlers["two"].is_async) == (True, True)
    assert plugin._tasks.after_last["index"].with_ctx
    assert plugin.actions == []  # tasks are not actions


def test_task_id_is_an_int_that_says_whether_it_was_deduped():
    tid = TaskId(7, True)
    assert tid == 7 and tid.id == 7 and tid.deduped and isinstance(tid, int)
    assert repr(tid) == "TaskId(7, deduped=True)"
    assert not TaskId(8).deduped
    import json
    assert json.dumps({"id": tid}) == '{"id": 7}'


def test_retry_is_retryable():
    assert Retry("later").retryable is True
    assert str(Retry("later")) == "later"

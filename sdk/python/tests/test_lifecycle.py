"""`@plugin.on_start` and `@plugin.on_stop`: `hello.on_start`, the `started` notification after
the start hooks, and the stop hooks after the work in flight (docs/protocol.md, "Handshake")."""

import time

import pytest

from conftest import PLUGINS
from plugd import Plugin

LIFECYCLE = PLUGINS / "lifecycle_plugin.py"


def ok(resp):
    assert "error" not in resp, resp
    return resp["result"]


def lifecycle(make_host, hooks, **kw):
    return make_host(LIFECYCLE, env={"HOOKS": hooks}, **kw)


def methods_and_logs(h):
    """What the plugin sent, in order: `started` (with its params) and each log message."""
    with h._cond:
        return [("started", n["params"]) if n["method"] == "started" else n["params"]["message"]
                for n in h.notifications if n["method"] in ("started", "log")]


def started(h):
    """The params of the plugin's `started` (`{}` on success), once it arrived."""
    return h.wait(lambda: h.notifications_of("started"), what="`started`")[0]


def hello_params(h):
    return h.wait(lambda: h.requests and h.requests[0], what="`hello`")["params"]


@pytest.mark.parametrize("script, env, announced", [
    ("kitchen_sink.py", None, False),
    (LIFECYCLE, {"HOOKS": "none"}, False),
    (LIFECYCLE, {"HOOKS": "ok"}, True),
    (LIFECYCLE, {"HOOKS": "kv"}, True),
])
def test_hello_says_on_start_only_when_a_hook_is_registered(make_host, script, env, announced):
    h = make_host(script, handshake=False, env=env)
    params = hello_params(h)
    if announced:
        assert params["on_start"] is True
    else:
        assert "on_start" not in params  # an old plugin's `hello` is unchanged
    h.handshake()
    if not announced:
        assert ok(h.call("echo" if script == "kitchen_sink.py" else "ran_hooks", [])) is not None
        assert not h.notifications_of("started")


def test_started_comes_after_the_start_hooks_in_registration_order(make_host):
    h = lifecycle(make_host, "ok", params={"quality": 80})
    assert started(h) == {}
    assert methods_and_logs(h) == ["first ran", "second ran", "third ran", ("started", {})]
    ran = ok(h.call("ran_hooks"))["value"]
    assert [r["hook"] for r in ran] == ["first", "second", "third"]
    second = ran[1]
    # A sync hook runs in the thread pool, like a sync action, and gets the plugin, which
    # already holds what `initialize` said.
    assert second["thread"].startswith("plugd-action")
    assert second["same"] is True and ran[2]["same"] is True
    assert second["params"] == {"quality": 80}


def test_a_failing_start_hook_is_reported_in_started_and_stops_the_rest(make_host):
    h = lifecycle(make_host, "fail")
    assert started(h) == {"error": "ValueError: no model in the data dir"}
    sent = methods_and_logs(h)
    assert sent[0] == "first ran"
    failure = sent[1]
    assert failure.startswith(
        "`on_start` hook `second` failed: ValueError: no model in the data dir"), failure
    assert "Traceback" in failure
    assert sent[2:] == [("started", {"error": "ValueError: no model in the data dir"})]
    log = h.wait_notification("log", lambda p: p["message"] == failure)
    assert log["level"] == "error"
    assert [r["hook"] for r in ok(h.call("ran_hooks"))["value"]] == ["first"]
    # No `on_stop` after a failed start.
    h.notify("shutdown")
    assert h.exit_code() == 0
    assert not [m for m in methods_and_logs(h) if isinstance(m, str) and "stop" in m]


def test_start_hooks_may_use_host_services_before_started(make_host):
    h = lifecycle(make_host, "kv", handshake=False)
    asked = []
    h.request_handler = asked.append  # held: answered below
    h.handshake()
    h.wait(lambda: asked, what="the hook's `kv.get`")
    assert asked[0]["method"] == "kv.get" and asked[0]["params"] == {"key": "greeting"}
    time.sleep(0.2)
    assert not h.notifications_of("started")  # the hook is still waiting for the host
    h.send({"jsonrpc": "2.0", "id": asked[0]["id"], "result": {"found": True, "value": "hi"}})
    assert started(h) == {}
    assert ok(h.call("ran_hooks"))["value"] == [{"hook": "load", "greeting": "hi"}]


def test_stop_hooks_run_after_the_calls_in_flight_then_the_plugin_exits(make_host):
    h = lifecycle(make_host, "ok")
    started(h)
    calls = [h.start_call("slow", 0.3), h.start_call("slow_sync", 0.3)]
    h.notify("shutdown")
    for rid in calls:
        assert ok(h.response(rid)) == {"value": "finished"}
    assert h.exit_code() == 0
    sent = methods_and_logs(h)
    stop = sent[sent.index("stop_first ran"):]
    assert stop[0] == "stop_first ran"
    assert stop[1].startswith("`on_stop` hook `stop_broken` failed: RuntimeError: cannot flush")
    assert "Traceback" in stop[1]
    assert stop[2:] == ["stop_last ran"]  # the hook after a failing one still ran
    # Both answers went out before the first stop hook ran.
    order = [line for line in h.raw_lines
             if b'"finished"' in line or b"stop_first ran" in line]
    assert len(order) == 3 and b"stop_first ran" in order[-1], order


def test_a_call_after_shutdown_is_refused_while_stop_hooks_wait(make_host):
    h = lifecycle(make_host, "ok")
    started(h)
    rid = h.start_call("slow", 0.3)
    h.notify("shutdown")
    refused = h.call("ran_hooks")
    assert refused["error"]["data"] == {"type": "ShuttingDown"}
    assert ok(h.response(rid)) == {"value": "finished"}
    assert h.exit_code() == 0


def test_stop_hooks_do_not_run_when_the_host_vanishes(make_host):
    h = lifecycle(make_host, "ok")
    started(h)
    h.close()
    assert h.exit_code() == 0
    assert "stop_first" not in h.stderr  # a record after EOF would go to stderr


def test_hooks_take_no_argument_or_the_plugin():
    p = Plugin()
    with pytest.raises(TypeError, match="a hook takes no argument, or one"):
        p.on_start(lambda a, b: None)
    with pytest.raises(TypeError, match="a hook takes no argument, or one"):
        p.on_stop(lambda *, key: None)
    with pytest.raises(TypeError, match="decorates a function"):
        p.on_start("not a function")
    p.on_start(lambda: None)
    p.on_start(lambda plugin, extra=1: None)
    p.on_stop(lambda *args: None)
    assert [h.with_plugin for h in p._start_hooks] == [False, True]
    assert [h.with_plugin for h in p._stop_hooks] == [True]

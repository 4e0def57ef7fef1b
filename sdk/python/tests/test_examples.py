"""The example plugins and the `plugd new --lang python` template, run as real plugins."""

import re
import sys
from pathlib import Path

import pytest

from fakehost import FakeHost

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "plugins"


@pytest.fixture
def example(tmp_path):
    hosts = []
    data = tmp_path / "data"
    data.mkdir()

    def start(name, cwd=None):
        h = FakeHost([sys.executable, "main.py"], cwd=cwd or EXAMPLES / name, data_dir=data,
                     name=name)
        hosts.append(h)
        h.handshake()
        return h

    yield start
    for h in hosts:
        h.kill()
        assert not h.errors, h.errors


def ok(resp):
    assert "error" not in resp, resp
    return resp["result"]


def manifest_actions(path):
    return re.findall(r'^\[\[actions\]\]\nname = "([^"]+)"', path.read_text(), re.M)


@pytest.mark.parametrize("name", ["hello", "store", "thumbs"])
def test_manifest_lists_the_actions_the_code_offers(example, name):
    h = example(name)
    announced = [a["name"] for a in h.requests[0]["params"]["actions"]]
    assert sorted(announced) == sorted(manifest_actions(EXAMPLES / name / "plugin.toml"))


def test_hello(example):
    h = example("hello")
    assert ok(h.call("greet", {"name": "Ada"})) == {"value": {"message": "Hello, Ada!"}}
    e = h.call("greet", {})["error"]
    assert e["code"] == -32002 and e["data"]["errors"][0]["loc"] == ["name"]
    assert ok(h.call("echo", {"any": ["thing", 1]})) == {"value": {"any": ["thing", 1]}}
    h.notify("event", {"topic": "hello.world", "payload": {"x": 1}})
    log = h.wait_notification("log", lambda p: "hello.world" in p["message"])
    assert log["level"] == "info"
    h.notify("shutdown")
    assert h.exit_code() == 0


def test_store_persists_in_the_data_dir(example, tmp_path):
    h = example("store")
    assert ok(h.call("get", {"key": "a"}))["value"] == {"key": "a", "found": False, "value": None}
    assert ok(h.call("put", {"key": "a", "value": {"n": 1}}))["value"]["stored"] is True
    assert ok(h.call("put", {"key": "b", "value": None}))
    assert ok(h.call("keys"))["value"] == ["a", "b"]
    assert (tmp_path / "data" / "store.json").exists()
    h.notify("shutdown")
    assert h.exit_code() == 0
    h2 = example("store")
    assert ok(h2.call("get", {"key": "a"}))["value"] == {"key": "a", "found": True, "value": {"n": 1}}
    assert ok(h2.call("delete", {"key": "b"}))["value"] == {"key": "b", "deleted": True}
    assert ok(h2.call("delete", {"key": "b"}))["value"] == {"key": "b", "deleted": False}
    assert h2.call("put", {"value": 1})["error"]["code"] == -32002


def test_thumbs_plan(example):
    h = example("thumbs")
    assert ok(h.call("plan", {"width": 4000, "height": 3000, "max": 256}))["value"] == {
        "width": 256, "height": 192, "scale": 0.064}
    assert ok(h.call("plan", {"width": 100, "height": 300, "max": 256}))["value"]["width"] == 85
    assert ok(h.call("plan", {"width": 100, "height": 200, "max": 256}))["value"] == {
        "width": 100, "height": 200, "scale": 1.0}  # never upscaled
    e = h.call("plan", {"width": 0, "height": 3, "max": 2})["error"]
    assert e["code"] == -32002 and "`width` must be at least 1" in e["message"]


def test_thumbs_depends_on_store():
    text = (EXAMPLES / "thumbs" / "plugin.toml").read_text()
    assert re.search(r'^\[dependencies\]\nstore = "\^2\.0"', text, re.M)
    assert re.search(r'^version = "2\.1\.0"', (EXAMPLES / "store" / "plugin.toml").read_text(), re.M)


def test_plugd_new_scaffolds_a_working_plugin(example, tmp_path, plugd_bin):
    import subprocess
    pkg = tmp_path / "my-plugin"
    run = subprocess.run([str(plugd_bin), "new", "my-plugin", "--lang", "python", "--dir", str(pkg)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in pkg.iterdir()) == ["README.md", "main.py", "plugin.toml"]
    assert "{{" not in "".join(p.read_text() for p in pkg.iterdir())
    assert 'name = "my-plugin"' in (pkg / "plugin.toml").read_text()
    h = example("my-plugin", cwd=pkg)
    assert ok(h.call("hello", {"name": "Ada"})) == {"value": {"message": "Hello, Ada!"}}
    assert ok(h.call("hello", {})) == {"value": {"message": "Hello, world!"}}

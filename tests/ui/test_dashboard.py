"""The dashboard end to end in headless Chromium: log-in, plugins, an action, params, a task."""

import json
import os
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

URL = os.environ["PLUGD_URL"]
TOKEN = os.environ["PLUGD_TOKEN"]
SHOTS = os.environ.get("PLUGD_SCREENSHOTS", "target/ui-screenshots")


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"], headless=True
        )
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors = []
        # The page's CSP would report inline code; any script error fails the run.
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        browser.close()
        assert not errors, errors


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def api(method, path, body=None):
    request = urllib.request.Request(
        URL + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def test_a_wrong_token_is_refused_with_the_servers_message(page):
    page.goto(URL + "/ui")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.get_by_test_id("token").fill("plugd_not-a-real-token")
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("error")).to_contain_text("invalid_token")
    expect(page.get_by_test_id("nav")).to_be_hidden()
    shot(page, "01-login-refused")


def test_log_in_and_see_the_plugins(page):
    page.get_by_test_id("token").fill(TOKEN)
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("nav")).to_be_visible()
    expect(page.get_by_test_id("who")).to_contain_text("ui (admin)")
    expect(page.get_by_test_id("plugin-state-hello")).to_have_text("running")
    expect(page.get_by_test_id("plugin-row-gallery")).to_be_visible()
    shot(page, "02-plugins")


def test_call_hello_greet_from_its_input_form(page):
    page.get_by_test_id("plugin-link-hello").click()
    expect(page.get_by_test_id("plugin-state")).to_have_text("running")
    page.get_by_test_id("action-greet-name").fill("Ada")
    page.get_by_test_id("call-greet").click()
    expect(page.get_by_test_id("result-greet")).to_contain_text("Hello, Ada!")
    # The live log pane shows the host's lines about this plugin.
    expect(page.get_by_test_id("logs")).not_to_be_empty()
    shot(page, "03-hello-greet")


def test_change_a_param_and_see_a_violation_by_its_field(page):
    page.goto(URL + "/ui/#/plugin/gallery")
    expect(page.get_by_test_id("plugin-state")).to_have_text("running")
    page.get_by_test_id("param-batch_size").fill("16")
    page.get_by_test_id("params-save").click()
    expect(page.get_by_test_id("params-status")).to_have_text("Saved")
    assert api("GET", "/api/v1/plugins/gallery/params")["params"]["batch_size"] == 16
    page.get_by_test_id("param-threshold").fill("7")
    page.get_by_test_id("params-save").click()
    expect(page.get_by_test_id("param-violation-threshold")).not_to_be_empty()
    expect(page.get_by_test_id("params-status")).to_contain_text("bad_params")
    # Nothing changed: the whole change was refused.
    assert api("GET", "/api/v1/plugins/gallery/params")["params"]["batch_size"] == 16
    shot(page, "04-gallery-params")


def test_watch_a_task_finish(page):
    page.get_by_test_id("nav-tasks").click()
    expect(page.get_by_test_id("tasks")).to_be_visible()
    task = api("POST", "/api/v1/tasks", {"plugin": "gallery", "task": "embed", "payload": {"path": "ui-test.png"}})
    tid = task["id"]
    # It arrives through the live stream, then reaches its end with a full bar.
    expect(page.get_by_test_id(f"task-state-{tid}")).to_have_text("succeeded", timeout=60_000)
    expect(page.get_by_test_id(f"task-progress-{tid}")).to_have_attribute("value", "1")
    shot(page, "05-task-finished")


def test_log_out_returns_to_the_log_in(page):
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    # The cookie is gone: the API refuses the browser now.
    page.goto(URL + "/ui/")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    shot(page, "06-logged-out")

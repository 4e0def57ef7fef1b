"""`plugd.script`: what stand-alone scripts use under `plugd script run`."""

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = """
from plugd import script
a = script.args()
script.progress(0.5, "half")
script.progress(7)
script.result({"got": a, "run": script.run_id()})
print("done")
"""


def run(source, stdin, env_extra, pass_fd):
    r, w = os.pipe()
    env = {"PYTHONPATH": str(SRC), "PATH": os.environ.get("PATH", "/usr/bin")}
    env.update(env_extra)
    if pass_fd:
        env["PLUGD_SCRIPT_FD"] = str(w)
    proc = subprocess.run(
        [sys.executable, "-c", source],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        pass_fds=(w,) if pass_fd else (),
        timeout=30,
    )
    os.close(w)
    with os.fdopen(r) as f:
        status = f.read()
    return proc, [json.loads(line) for line in status.splitlines()]


def test_args_progress_and_result_go_to_the_status_fd():
    proc, lines = run(SCRIPT, '{"n": 3}', {"PLUGD_RUN_ID": "12"}, True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert lines == [
        {"progress": 0.5, "message": "half"},
        {"progress": 1.0},
        {"result": {"got": {"n": 3}, "run": 12}},
    ]


def test_without_plugd_status_goes_to_stderr_and_empty_stdin_is_no_args():
    proc, lines = run(SCRIPT, "", {}, False)
    assert proc.returncode == 0, proc.stderr
    assert lines == []
    assert '[plugd] {"progress":0.5,"message":"half"}' in proc.stderr
    assert '[plugd] {"result":{"got":{},"run":null}}' in proc.stderr


def test_arguments_that_are_not_an_object_are_refused():
    proc, _ = run(SCRIPT, "[1, 2]", {}, True)
    assert proc.returncode != 0
    assert "not a JSON object" in proc.stderr


def test_importing_the_script_module_does_not_load_the_plugin_machinery():
    code = "import sys; from plugd import script; print('asyncio' in sys.modules, 'plugd._plugin' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
        timeout=30,
    )
    assert out.stdout.split() == ["False", "False"], out.stderr
    # Plugin authors' imports keep working.
    code = "from plugd import Plugin, Retry, ValidationFailed, __version__; import plugd; print(plugd.Notification.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
        timeout=30,
    )
    assert out.stdout.strip() == "Notification", out.stderr

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fakehost import FakeHost, python_argv  # noqa: E402

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def make_host(tmp_path):
    hosts = []

    def make(script="kitchen_sink.py", *, handshake=True, cwd=None, name="test", **kw):
        (tmp_path / "data").mkdir(exist_ok=True)
        script_path = Path(script) if Path(script).is_absolute() else PLUGINS / script
        h = FakeHost(python_argv(script_path), cwd=cwd, data_dir=tmp_path / "data", name=name,
                     env=kw.pop("env", None), http_sock=kw.pop("http_sock", None),
                     handoff_sock=kw.pop("handoff_sock", None))
        hosts.append(h)
        if handshake:
            h.handshake(**kw)
        return h

    yield make
    for h in hosts:
        h.kill()
        assert not h.errors, h.errors


@pytest.fixture
def host(make_host):
    return make_host()


ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def plugd_bin():
    """The real `plugd` binary (`target/debug/plugd`), built with `cargo build -p plugd` when
    it is missing."""
    import shutil
    import subprocess

    binary = ROOT / "target" / "debug" / "plugd"
    if not binary.exists():
        cargo = shutil.which("cargo")
        if cargo is None:
            pytest.fail(f"`{binary}` is missing and `cargo` is not on the PATH; hint: run "
                        "`cargo build -p plugd` first")
        build = subprocess.run([cargo, "build", "-p", "plugd"], cwd=ROOT, capture_output=True,
                               text=True, timeout=1800)
        if build.returncode != 0 or not binary.exists():
            pytest.fail(f"`cargo build -p plugd` failed:\n{build.stderr[-4000:]}")
    return binary

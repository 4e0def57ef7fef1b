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
                     env=kw.pop("env", None))
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

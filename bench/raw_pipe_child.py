"""The baseline for process-plugin latency: a bare Python child answering calls on fd 3.

It does the least a Python plugin could do per call — `json.loads` of the frame, `json.dumps`
of the reply, blocking reads and writes on fd 3 — so host latency can be compared with "a raw
Python pipe round trip". It says `hello` first (skip with `--no-hello`) and answers `ping`, so a
plugd host can also run it as a plugin with one action, `echo`.

Reply to `call`: `{"jsonrpc":"2.0","id":<id>,"result":{"value":<payload>}}`.
"""

import json
import os
import sys


def main() -> int:
    fd = int(os.environ.get("PLUGD_FD", "3"))
    rf = os.fdopen(fd, "rb")
    wf = os.fdopen(os.dup(fd), "wb", buffering=0)
    if "--no-hello" not in sys.argv:
        wf.write(b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1,'
                 b'"sdk":"raw/0","actions":[{"name":"echo","description":"Echo"}]}}\n')
    loads, dumps = json.loads, json.dumps
    for line in rf:
        msg = loads(line)
        method = msg.get("method")
        if method == "call":
            wf.write(('{"jsonrpc":"2.0","id":%d,"result":{"value":%s}}\n'
                      % (msg["id"], dumps(msg["params"]["payload"]))).encode())
        elif method == "ping":
            wf.write(b'{"jsonrpc":"2.0","id":%d,"result":"pong"}\n' % msg["id"])
        elif method == "shutdown":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Round-trip latency of the Python SDK against a bare Python pipe child.

Spawns (a) `bench/raw_pipe_child.py` and (b) `examples/plugins/hello` (action `echo`) with a
socket pair as fd 3, and times N sequential `call`s from Python (a blocking socket driver, the
same for both). Prints p50/p99/mean in microseconds and the SDK/raw ratio.

    python3 sdk/python/bench_sdk.py [-n 10000] [--payload '{"name":"Ada"}']
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def spawn(argv, cwd):
    host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    cfd = child_end.fileno()

    def to_fd3():
        if cfd == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(cfd, 3)

    env = dict(os.environ, PLUGD_FD="3", PLUGD_PLUGIN="bench", PLUGD_PROTOCOL="1",
               PYTHONPATH=str(HERE / "src"))
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            close_fds=False, preexec_fn=to_fd3)
    child_end.close()
    return proc, host_end


class Driver:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def frame(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("The child closed the socket")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def handshake(self):
        hello = self.frame()
        assert hello["method"] == "hello", hello
        self.sock.sendall((json.dumps({"jsonrpc": "2.0", "id": hello["id"], "result": {
            "protocol": 1, "plugin": "bench", "version": "0.0.0", "params": {},
            "data_dir": "/tmp", "services": []}}) + "\n").encode())


def _cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name, argv, cwd, n, payload_json, warmup):
    proc, sock = spawn(argv, cwd)
    d = Driver(sock)
    d.handshake()
    template = '{"jsonrpc":"2.0","id":%d,"method":"call","params":{"action":"echo","payload":' \
               + payload_json + ',"deadline_ms":5000}}\n'
    expect = json.loads(payload_json)
    samples = []
    perf = time.perf_counter_ns
    send = sock.sendall
    cpu0 = 0.0
    for i in range(warmup + n):
        if i == warmup:
            cpu0 = _cpu_seconds(proc.pid)
        data = (template % (i + 10)).encode()
        t0 = perf()
        send(data)
        reply = d.frame()
        t1 = perf()
        if i >= warmup:
            samples.append((t1 - t0) / 1000.0)
        assert reply["id"] == i + 10 and reply["result"]["value"] == expect, reply
    cpu = _cpu_seconds(proc.pid) - cpu0
    sock.sendall(b'{"jsonrpc":"2.0","method":"shutdown","params":{}}\n')
    proc.wait(10)
    sock.close()
    samples.sort()
    stats = {
        "p50": samples[len(samples) // 2],
        "p99": samples[int(len(samples) * 0.99)],
        "mean": statistics.fmean(samples),
        # CPU time the child spent per measured call: steadier than wall time on a busy machine.
        "cpu": cpu * 1e6 / n,
    }
    print(f"{name:>10}: p50 {stats['p50']:7.1f} us   p99 {stats['p99']:7.1f} us   "
          f"mean {stats['mean']:7.1f} us   child cpu/call {stats['cpu']:5.1f} us   (n={n})")
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--payload", default='{"name":"Ada"}')
    ap.add_argument("--python", default=sys.executable, help="interpreter for both children")
    args = ap.parse_args()
    print(f"python {subprocess.check_output([args.python, '-c', 'import sys; print(sys.version.split()[0])']).decode().strip()}")
    raw = measure("raw pipe", [args.python, str(ROOT / "bench" / "raw_pipe_child.py")], ROOT,
                  args.n, args.payload, args.warmup)
    sdk = measure("sdk echo", [args.python, "main.py"], ROOT / "examples" / "plugins" / "hello",
                  args.n, args.payload, args.warmup)
    print(f"     ratio: p50 {sdk['p50'] / raw['p50']:.2f}x   p99 {sdk['p99'] / raw['p99']:.2f}x   "
          f"mean {sdk['mean'] / raw['mean']:.2f}x   child cpu {sdk['cpu'] / raw['cpu']:.2f}x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What an unauthenticated peer can make an engine and a broker hold, with default options.

    python3 bench/memory_attacks.py [--zerocan build/zerocan] [--only NAME ...]

Starts `zerocan engine` (bound, direct) and `zerocan broker` (with one engine behind it)
as separate processes and attacks each over tcp loopback, speaking raw ZMTP 3.0 (NULL
mechanism) from this process:

  big-message     one message of 3 x 1.9 GiB frames
  four-big        four such connections at once
  stalled         100 connections, each sending 32 MiB of a 64 MiB frame, then stalling
  queue-flood     40 x 64 MiB calls (timeoutMs 0) to a broker with no engine; the client
                  then leaves (broker only)

For each it prints the target's idle RSS, its peak during the attack (sampled every
10 ms), its RSS 10 s after the attack ended, whether the attacker's connections were
closed, and the worst latency of an honest `add` call made every 50 ms throughout.
Budget (docs/SECURITY.md): peak at most 2 GiB above idle, back within 10% of idle.
"""
import argparse
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
import zerocan  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss(self.pid))
            except OSError:
                return
            time.sleep(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


class Honest:
    """An `add` call every 50 ms; records the worst latency and any failure."""

    def __init__(self, url: str):
        self.url, self.worst, self.failures, self.calls = url, 0.0, [], 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with zerocan.Client(self.url, timeout=10) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    assert c.call("add", 1, 2) == 3
                except Exception as e:  # noqa: BLE001 - reported
                    self.failures.append(repr(e))
                self.worst = max(self.worst, time.monotonic() - t0)
                self.calls += 1
                self._stop.wait(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# ---- a raw ZMTP 3.0 peer ------------------------------------------------------------------

def zmtp_connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00")
    greeting += b"\x00" + b"\x00" * 31
    prop = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + prop
    s.sendall(greeting + bytes([0x04, len(body)]) + body)
    return s


def frame_header(size: int, more: bool) -> bytes:
    return bytes([0x02 | (0x01 if more else 0)]) + struct.pack(">Q", size)


def send_bytes(s: socket.socket, n: int, chunk: memoryview) -> bool:
    """Sends n bytes; False once the peer closed the connection."""
    try:
        while n > 0:
            k = min(n, len(chunk))
            s.sendall(chunk[:k])
            n -= k
        return True
    except OSError:
        return False


def closed_by_peer(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        while True:
            if not s.recv(65536):
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


CHUNK = memoryview(bytearray(64 * MIB))


def attack_big_message(port: int, connections: int):
    """`connections` peers, each one message of 3 x 1.9 GiB frames."""
    frame = int(1.9 * GIB)
    results = []

    def one():
        s = zmtp_connect(port)
        ok = True
        for i in range(3):
            try:
                s.sendall(frame_header(frame, more=i < 2))
            except OSError:
                ok = False
            ok = ok and send_bytes(s, frame, CHUNK)
        results.append((s, ok))

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    closed = sum(1 for s, _ in results if closed_by_peer(s, 0.5))
    for s, _ in results:
        s.close()
    return f"{closed}/{connections} connections closed by the target"


def attack_stalled(port: int, connections: int = 100, sent: int = 32 * MIB,
                   frame: int = 64 * MIB, hold: float = 45.0):
    socks = []
    cut_while_sending = 0
    for _ in range(connections):
        s = zmtp_connect(port)
        s.sendall(frame_header(frame, more=False))
        if not send_bytes(s, sent, CHUNK):
            cut_while_sending += 1
        socks.append(s)
    t0 = time.monotonic()
    # Watch all of them at once: when did the target close each?
    open_socks = {s.fileno(): s for s in socks}
    closed_at = []
    poller = select.poll()
    for fd in open_socks:
        poller.register(fd, select.POLLIN)
    while open_socks:
        left = hold - (time.monotonic() - t0)
        if left <= 0:
            break
        for fd, _ in poller.poll(int(left * 1000) + 1):
            try:
                data = open_socks[fd].recv(65536)
            except OSError:
                data = b""
            if not data:
                closed_at.append(time.monotonic() - t0)
                poller.unregister(fd)
                del open_socks[fd]
    for s in socks:
        s.close()
    if closed_at:
        early = sum(1 for t in closed_at if t < 1.0)
        return (f"{len(closed_at)}/{connections} closed by the target: {cut_while_sending} "
                f"while the attacker was still sending, {early} within 1 s of its last "
                f"byte, the last {max(closed_at):.1f} s after it")
    return f"0/{connections} closed by the target within {hold:.0f} s"


def attack_queue_flood(url: str, calls: int = 40, size: int = 64 * MIB):
    import numpy as np
    a = np.ones(size, dtype=np.uint8)
    busy = 0
    with zerocan.Client(url, timeout=None) as c:  # no deadline: timeoutMs 0 on the wire
        futs = [c.apply("nbytes", a) for _ in range(calls)]
        time.sleep(2.0)
        for f in futs:
            if f.done() and isinstance(f.exception(), zerocan.RemoteError):
                busy += f.exception().type == "zerocan.Busy"
    return f"{busy}/{calls} answered zerocan.Busy at once; the client then left"


# ---- targets ------------------------------------------------------------------------------

class Target:
    def __init__(self, tool: str, kind: str, with_engine: bool = True):
        self.kind, self.procs = kind, []
        self.port = free_port()
        if kind == "engine":
            self.procs.append(subprocess.Popen(
                [tool, "engine", "--bind", f"tcp://127.0.0.1:{self.port}", "--builtins"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        else:
            back = free_port()
            self.procs.append(subprocess.Popen(
                [tool, "broker", "--frontend", f"tcp://127.0.0.1:{self.port}",
                 "--backend", f"tcp://127.0.0.1:{back}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if with_engine:
                self.procs.append(subprocess.Popen(
                    [tool, "engine", "--connect", f"tcp://127.0.0.1:{back}", "--builtins"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.pid = self.procs[0].pid
        if with_engine:
            with zerocan.Client(self.url, timeout=10) as c:
                assert c.call("add", 1, 1) == 2
        else:
            time.sleep(0.5)

    def close(self):
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
            p.wait()


def run(tool: str, target_kind: str, name: str, attack) -> dict:
    with_engine = name != "queue-flood"
    t = Target(tool, target_kind, with_engine)
    try:
        time.sleep(0.5)
        idle = rss(t.pid)
        honest = Honest(t.url) if with_engine else None
        with PeakSampler(t.pid) as peak:
            if honest:
                honest.__enter__()
            what = attack(t)
            end = time.monotonic()
            while time.monotonic() - end < 10.0:
                time.sleep(0.1)
            after = rss(t.pid)
            if honest:
                honest.__exit__(None, None, None)
        alive = t.procs[0].poll() is None
    finally:
        t.close()
    row = {"target": target_kind, "attack": name, "idle": idle, "peak": peak.peak,
           "after": after, "alive": alive, "what": what,
           "honest_worst": honest.worst if honest else None,
           "honest_failed": len(honest.failures) if honest else None,
           "honest_calls": honest.calls if honest else None}
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zerocan", default=os.environ.get(
        "ZEROCAN_BIN", os.path.join(HERE, "..", "build", "zerocan")))
    ap.add_argument("--only", nargs="*", default=None,
                    help="big-message four-big stalled queue-flood")
    args = ap.parse_args()
    attacks = {
        "big-message": lambda t: attack_big_message(t.port, 1),
        "four-big": lambda t: attack_big_message(t.port, 4),
        "stalled": lambda t: attack_stalled(t.port),
        "queue-flood": lambda t: attack_queue_flood(t.url),
    }
    rows = []
    for name, attack in attacks.items():
        if args.only and name not in args.only:
            continue
        for kind in ("engine", "broker"):
            if name == "queue-flood" and kind == "engine":
                continue
            row = run(args.zerocan, kind, name, attack)
            rows.append(row)
            over = (row["peak"] - row["idle"]) / GIB
            back = row["after"] / max(row["idle"], 1)
            ok = over <= 2.0 and back <= 1.10 and row["alive"] and (
                row["honest_worst"] is None or (row["honest_worst"] < 1.0 and
                                                row["honest_failed"] == 0))
            honest = ("-" if row["honest_worst"] is None else
                      f"{row['honest_worst'] * 1000:.0f} ms worst, "
                      f"{row['honest_failed']}/{row['honest_calls']} failed")
            print(f"{kind:6} {name:12} idle {row['idle'] / MIB:7.1f} MiB  peak +"
                  f"{over:5.2f} GiB  10 s after {row['after'] / MIB:7.1f} MiB "
                  f"({back:4.2f}x idle)  honest: {honest}  "
                  f"{'within budget' if ok else 'OVER BUDGET'}\n"
                  f"       {'':12} {row['what']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

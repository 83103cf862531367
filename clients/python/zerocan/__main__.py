"""``python -m zerocan engine ...``: a Python engine process. (The benchmark is not part of
the package: clients/python/benchmarks/zerocan_bench.py in the repository.)"""

from __future__ import annotations

import sys
from typing import Optional

from .engine import Engine


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m zerocan engine --bind URL | --connect URL [--id ID] [--builtins]
    [--allow-pickle] [--key-file FILE] [--io-cpus LIST]``"""
    import argparse
    import signal
    p = argparse.ArgumentParser(prog="python -m zerocan engine",
                                description="Serve Python functions (sent by value with "
                                            "--allow-pickle) and, with --builtins, the test "
                                            "built-ins to zerocan clients.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--bind", metavar="URL", help="bind a ROUTER; clients connect directly")
    g.add_argument("--connect", metavar="URL", help="connect to a broker's backend")
    p.add_argument("--id", default=None)
    p.add_argument("--builtins", action="store_true",
                   help="register the test built-ins echo, add, sum, nbytes, sleep and fail")
    p.add_argument("--allow-pickle", action="store_true",
                   help="run functions sent by value (cloudpickle): runs arbitrary code")
    p.add_argument("--heartbeat", type=float, default=0.5, help="seconds (default 0.5)")
    p.add_argument("--threads", type=int, default=None,
                   help="worker threads running calls (0 = on the I/O thread; default: 1 "
                        "with --connect, 0 with --bind)")
    p.add_argument("--key-file", metavar="FILE", default=None,
                   help="sign every message and accept only messages signed with this key "
                        "(docs/SECURITY.md; JSON with a \"key\" string, or the raw key), with "
                        "replay protection")
    p.add_argument("--no-shared-memory", action="store_true",
                   help="answer no client's hello and refuse shared-memory references: "
                        "callers on this host send frames, as zerocan engine "
                        "--no-shared-memory")
    p.add_argument("--io-cpus", metavar="LIST", default=None,
                   help="run the engine's libzmq I/O thread only on these CPUs (\"1\", "
                        "\"0,2\", \"2-3\"), as zerocan engine --io-cpus")
    args = p.parse_args(argv)
    from .placement import parse_cpu_list
    from .errors import Error
    try:
        io_cpus = parse_cpu_list(args.io_cpus) if args.io_cpus is not None else None
    except Error as e:
        p.error(str(e))
    from .policy import apply_memory_policy
    apply_memory_policy()
    try:
        engine = Engine(args.bind or args.connect, bind=args.bind is not None, id=args.id,
                        builtins=args.builtins,
                        allow_pickle=args.allow_pickle, heartbeat=args.heartbeat,
                        threads=args.threads, key_file=args.key_file, io_cpus=io_cpus,
                        shared_memory=not args.no_shared_memory)
    except Error as e:  # a refused CPU, an unreadable key file: one line, as zerocan engine
        print(f"python -m zerocan engine: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: engine.request_stop())
    print(f"zerocan python engine {engine.id} at {engine.endpoint or args.connect}",
          file=sys.stderr, flush=True)
    engine.run()
    return 0

if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "engine":
        raise SystemExit(main(sys.argv[2:]))
    print("usage: python -m zerocan engine (--bind URL | --connect URL) [--allow-pickle] "
          "[--key-file FILE]", file=sys.stderr)
    raise SystemExit(2)

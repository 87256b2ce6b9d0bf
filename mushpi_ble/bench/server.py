"""``python -m mushpi_ble.bench.server KIND VARIANT --bus ADDRESS``: one benchmark server.

The one way every benchmark starts a server in a child process (see
:mod:`mushpi_ble.bench.wire` for what it says). ``KIND`` names the module
whose ``serve(variant, address)`` runs; it is imported only here, so a
server loads nothing the parent's other servers need. ``--profile FILE``
runs the server under cProfile. A server ends with the process that started
it (:mod:`mushpi_ble.bench.lifeline`).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable, Sequence

from mushpi_ble.bench import lifeline

KINDS = {
    "peripheral": "mushpi_ble.bench.peripheral",
    "peer": "mushpi_ble.bench.peer",
    "facade": "mushpi_ble.bench.facade_ab",
    "dbus": "mushpi_ble.bench.dbus_servers",
    "flood": "mushpi_ble.bench.flood",
}


def run_profiled(main: Callable[[], int], profile: str | None) -> int:
    """Run a server, under cProfile when ``profile`` names an output file; SIGINT
    ends it normally (the parent stops servers with it)."""
    if profile:
        import cProfile

        profiler: cProfile.Profile | None = cProfile.Profile()
    else:
        profiler = None
    try:
        if profiler is not None:
            profiler.enable()
        return main()
    except KeyboardInterrupt:
        return 0
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


def main(argv: Sequence[str] | None = None) -> int:
    lifeline.watch()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("variant", help="which server of that kind (a library, a backend)")
    parser.add_argument("--bus", required=True, help="D-Bus address to serve on")
    parser.add_argument("--profile", default=None, help="write a cProfile profile here")
    args = parser.parse_args(argv)
    # A shell that starts a benchmark in the background ignores SIGINT, and
    # children inherit that: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    serve: Callable[[str, str], int] = importlib.import_module(KINDS[args.kind]).serve
    return run_profiled(lambda: serve(args.variant, args.bus), args.profile)


if __name__ == "__main__":
    sys.exit(main())

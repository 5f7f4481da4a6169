"""`python -m bench._profiled OUT ARGS…`: `ownllm ARGS…` under cProfile with a CPU-time
clock, the profiler switched on and off by SIGUSR1 (so the start-up is left out), its
stats written to OUT when the process ends (bench/vllm_gateway.py `--profile`)."""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    profile = cProfile.Profile(time.process_time)
    is_on = False

    def toggle(signum, frame) -> None:
        nonlocal is_on
        profile.disable() if is_on else profile.enable()
        is_on = not is_on

    signal.signal(signal.SIGUSR1, toggle)
    sys.argv = ["ownllm", *args]
    try:
        runpy.run_module("ownllm", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()

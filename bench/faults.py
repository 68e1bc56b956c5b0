"""Fault figures: how long recovery takes, measured by the fault-injection tests with real processes.

Runs the real-process tests of tests/jobs/test_faults.py a few times (SIGKILL of a worker mid-epoch
then a new worker; a killed worker whose job only the heartbeat can declare dead; cancel of a running
job) and summarises the figures they print on their `FAULTS ...` lines:

- sigkill_to_running_again_s: SIGKILL of the worker's process group to the job running again on a
  freshly started worker (includes that worker's start-up; same host, so the dead pid is seen at once).
- steps_lost / training_lost_s: optimizer steps redone after the crash (from the last epoch-end
  checkpoint to the step at the kill), and that in seconds of training at the run's pace.
- dead_job_shown_running_s: SIGKILL to the job no longer showing "running" when only the heartbeat
  can tell (the holder passes for another host), with the tests' fast settings (heartbeat 1 s,
  stale after 3 s, reaper every 1 s: limit 4 s). With the defaults the limit is 30 + 10 = 40 s.
- cancel_to_cancelled_s / cancel_to_next_job_done_s: cancel of a running job to its status being
  cancelled, and to a tiny next job on the same worker having run to the end (the worker is free).

    .venv/bin/python bench/faults.py              # 3 rounds
    .venv/bin/python bench/faults.py --rounds 5
    .venv/bin/python bench/faults.py --rounds 1 --default-timings   # the dead-job figure with 5/30/10 s

Needs Redis on REDIS_URL; the tests use their own queues, database and media folder.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = "tests/jobs/test_faults.py"
SELECT = "killed or heartbeat or cancelled"
FIGURE = re.compile(r"(\w+)=([\d.]+)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--default-timings", action="store_true",
                        help="only the heartbeat test, with the default heartbeat/stale/reaper settings")
    args = parser.parse_args()
    select = "heartbeat" if args.default_timings else SELECT
    env = {**os.environ, "FAULTS_WITH_DEFAULT_TIMINGS": "1" if args.default_timings else "0"}
    figures: dict[str, list[float]] = {}
    for round_ in range(1, args.rounds + 1):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TESTS, "-k", select],
            cwd=REPO, capture_output=True, text=True, env=env,
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("FAULTS")]
        print(f"round {round_}: pytest exit {result.returncode}")
        for line in lines:
            print("  " + line)
            for name, value in FIGURE.findall(line):
                figures.setdefault(name, []).append(float(value))
        if result.returncode != 0:
            print("\n".join(line for line in result.stdout.splitlines() if not line.startswith("E        "))[-6000:])
            return result.returncode
    print("\n| figure | median | worst | runs |\n|---|---|---|---|")
    for name, values in figures.items():
        if name == "limit":
            continue
        print(f"| {name} | {statistics.median(values):.1f} | {max(values):.1f} | {len(values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

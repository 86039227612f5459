"""Run the microbenchmarks and compare them with the saved baseline (`nox -s bench`).

    python benchmarks/micro/run.py                  # compare; exit 1 on a regression
    python benchmarks/micro/run.py --save-baseline  # measure and store benchmarks/micro/baseline.json

pytest-benchmark compares against runs in its storage folder (one sub-folder per machine id), so
the committed baseline is placed there as run 0001 and ``--benchmark-compare-fail`` flags any
benchmark whose median is more than ``--threshold`` (default 25 %) slower. The current run is
written to reports/bench-micro.json. Baselines are machine-specific: re-save on a new machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pytest_benchmark.utils import get_machine_id

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baseline.json"
ROOT = HERE.parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--save-baseline", action="store_true")
    parser.add_argument("--threshold", default="25%", help="allowed median slowdown")
    parser.add_argument("--json", type=Path, default=ROOT / "reports" / "bench-micro.json")
    args, extra = parser.parse_known_args()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "--benchmark-min-rounds=20",
        "--benchmark-sort=name",
        "--benchmark-columns=median,iqr,ops,rounds",
        f"--benchmark-json={args.json}",
    ]
    if args.save_baseline:
        code = subprocess.call([*cmd, *extra], cwd=ROOT)
        if code == 0:
            shutil.copy(args.json, BASELINE)
            print(f"baseline saved: {BASELINE}")
        return code
    if not BASELINE.exists():
        print(f"no baseline at {BASELINE}: run with --save-baseline first", file=sys.stderr)
        return 2
    # Inside the checkout: pytest-benchmark prints the storage path relative to the working
    # directory when the machine info differs from the baseline's, and crashes on one outside it.
    with tempfile.TemporaryDirectory(prefix=".bench-storage-", dir=ROOT) as storage:
        machine = Path(storage) / get_machine_id()
        machine.mkdir()
        shutil.copy(BASELINE, machine / "0001_baseline.json")
        cmd += [
            f"--benchmark-storage=file://{storage}",
            "--benchmark-compare=0001",
            f"--benchmark-compare-fail=median:{args.threshold}",
        ]
        print(" ".join(cmd), flush=True)
        code = subprocess.call([*cmd, *extra], cwd=ROOT)
    print("regression against the baseline" if code else "no regression beyond " + args.threshold)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

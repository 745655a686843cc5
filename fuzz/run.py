"""Run every fuzz target under atheris (libFuzzer, coverage-guided), one process per target, from the
seed corpus in fuzz/corpus/<target>/, and print one JSON report: executions, crashes and peak memory.

    python -m fuzz.run [SECONDS] [--only NAME ...] [--jobs N] [--runs N]

SECONDS (default 300) is the whole run, shared evenly by the targets. The corpus checked in is only
read: what a run finds goes to a temporary directory (kept with `--keep DIR`), and so does a crash's
input (`crash-*`), whose path and last traceback line the report names. Exit status 1 if any target
crashed: an exception other than the SDK's own error, a broken invariant, a timeout or memory over
`--rss-limit-mb`.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.MULTILINE)


def child(name: str, args: list[str]) -> None:
    """Inside the target's own process: instrument the SDK, then hand the target to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["device_sdk", "firmware_bridge", "fuzz"]):
        from fuzz import targets

    def one(data: bytes) -> None:
        targets.run(name, data)

    atheris.Setup([sys.argv[0], *args], one)
    atheris.Fuzz()


def fuzz_one(name: str, seconds: int, runs: int, rss_limit_mb: int, work: Path) -> dict[str, object]:
    found = work / name
    found.mkdir(parents=True, exist_ok=True)
    args = [
        f"-max_total_time={seconds}",
        f"-runs={runs}",
        "-print_final_stats=1",
        f"-rss_limit_mb={rss_limit_mb}",
        "-timeout=10",
        "-max_len=8192",
        f"-artifact_prefix={work}/crash-{name}-",
        str(found),
        str(CORPUS / name),
    ]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--child", name, "--", *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=seconds + 600,
    )
    stats = {key: int(value) for key, value in _STAT.findall(done.stderr)}
    crashes = sorted(str(p) for p in work.glob(f"crash-{name}-*"))  # crash-, oom-, timeout- after the prefix
    report: dict[str, object] = {
        "target": name,
        "executions": stats.get("number_of_executed_units", 0),
        "seconds": round(time.monotonic() - started, 1),
        "peak_rss_mb": stats.get("peak_rss_mb", 0),
        "corpus_found": len(list(found.iterdir())),
        "crashed": done.returncode != 0,
        "crash_inputs": crashes,
    }
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        report["error"] = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1:])
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[3:])
        return 0
    from fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(prog="fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=int, default=300, help="the whole run, shared by the targets")
    parser.add_argument("--only", nargs="+", choices=sorted(TARGETS), help="these targets only")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    parser.add_argument("--runs", type=int, default=-1, help="stop each target after this many inputs")
    parser.add_argument("--rss-limit-mb", type=int, default=1024)
    parser.add_argument("--keep", type=Path, help="keep what the run found (new corpus, crashes) here")
    options = parser.parse_args(argv)
    names = options.only or sorted(TARGETS)
    each = max(1, options.seconds * options.jobs // len(names))
    with tempfile.TemporaryDirectory(prefix="fuzz-") as temporary:
        work = options.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(options.jobs) as pool:
            reports = list(pool.map(lambda name: fuzz_one(name, each, options.runs, options.rss_limit_mb, work), names))
        if options.keep is None:  # the crash inputs go with the directory: print them
            for report in reports:
                inputs = report["crash_inputs"]
                assert isinstance(inputs, list)
                report["crash_inputs"] = [Path(p).read_bytes().hex() for p in inputs]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    summary = {
        "targets": reports,
        "executions": sum(int(str(r["executions"])) for r in reports),
        "crashes": sum(1 for r in reports if r["crashed"]),
        "peak_rss_mb": max([children, *(int(str(r["peak_rss_mb"])) for r in reports)]),
    }
    print(json.dumps(summary, indent=2))
    return 1 if summary["crashes"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

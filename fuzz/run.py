"""The documented fuzz run: every input boundary of telemon under atheris (libFuzzer,
coverage-guided over telemon's own Python code), each target for a fixed number of inputs.

    .venv/bin/python fuzz/run.py                 # every target, the documented budget
    .venv/bin/python fuzz/run.py --scale 0.01    # the same, 1 % of the inputs (a smoke run)
    .venv/bin/python fuzz/run.py --only wire     # targets whose name contains "wire"

Targets run as separate processes, `--jobs` at a time (atheris takes over its process, and
ends it when a target crashes). For each target it prints the inputs tried, how many were
accepted and rejected, the most common rejection reasons (numbers and quoted values masked),
and whether it crashed; a crash leaves its input in the output folder (`crash-…`) and the
run exits 1. What a crash is: see fuzz/targets.py. Needs `pip install -e '.[fuzz]'` (atheris).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Inputs per target in the documented run (1,110,000 in all, about 5 minutes on 2 cores).
# A framer input is a stream of up to 1.5 KB fed in chunks, each frame of it parsed: a
# hundred times the work of one parser input, so framers get fewer inputs.
BUDGET = {"parser": 60_000, "framer": 10_000, "wire": 200_000, "config": 100_000,
          "ingest": 100_000}
MAX_LEN = {"framer": 1536, "config": 2048}  # libFuzzer's largest input, default 1024


def target_names() -> list[str]:
    import targets

    # the slowest first, so that the last targets to start are short ones
    return ([f"framer:{name}" for name in targets.framers()] + ["config", "ingest", "wire"]
            + [f"parser:{name}" for name in targets.parsers()])


# --- one target, in its own process -------------------------------------------------------------

def worker(name: str, runs: int, out: Path) -> None:
    """Fuzz one target with atheris until `runs` inputs were tried; write the tally to
    out/<name>.json and end the process (libFuzzer would otherwise go on)."""
    import atheris

    with atheris.instrument_imports(include=["telemon", "tomllib"]):
        import targets

        targets.parsers()  # loads the plugins (entry points) while imports are instrumented
    import logging

    logging.disable(logging.CRITICAL)  # the central logs each quarantined message
    kind, _, driver_name = name.partition(":")
    scratch = out / name.replace(":", "_")  # its corpus, database, config file: kept
    scratch.mkdir(exist_ok=True)
    if kind == "parser":
        driver = targets.parsers()[driver_name]
        seeds = targets.parser_seeds(driver)

        def check(data: bytes) -> list[str]:
            ctx, frame = targets.context_from_bytes(driver, data)
            return targets.check_parser(driver, frame, ctx)
    elif kind == "framer":
        driver = targets.framers()[driver_name]
        seeds = [bytes([size]) + s for s in targets.stream_seeds(driver) for size in (0, 63)]

        def check(data: bytes) -> list[str]:
            return targets.check_framer(driver, targets.chunks_from_bytes(data))
    elif kind == "wire":
        seeds, check = targets.wire_seeds(), targets.check_wire
    elif kind == "config":
        seeds, path = targets.config_seeds(scratch / "data"), scratch / "fuzz.toml"

        def check(data: bytes) -> list[str]:
            return targets.check_read(path, data)
    elif kind == "ingest":
        ingest = targets.Ingest.open(scratch / "data")
        seeds = [bytes([0]) + s for s in targets.wire_seeds()]

        def check(data: bytes) -> list[str]:
            return targets.check_ingest(ingest, *targets.ingest_from_bytes(data), keep=False)
    else:
        raise SystemExit(f"unknown target {name!r}")

    corpus = scratch / "corpus"
    corpus.mkdir(exist_ok=True)
    for number, seed in enumerate(seeds):
        (corpus / f"seed-{number}").write_bytes(seed)
    tally = {"target": name, "inputs": 0, "accepted": 0, "rejected": 0}
    reasons: Counter[str] = Counter()
    started = time.monotonic()

    def one_input(data: bytes) -> None:
        found = check(data)
        tally["inputs"] += 1
        tally["rejected" if found else "accepted"] += 1
        reasons.update(targets.reason_kind(reason) for reason in found)
        if tally["inputs"] >= runs:
            tally["seconds"] = round(time.monotonic() - started, 1)
            tally["reasons"] = dict(reasons.most_common())
            (out / f"{name.replace(':', '_')}.json").write_text(json.dumps(tally, indent=1))
            os._exit(0)

    max_len = MAX_LEN.get(kind, 1024)
    atheris.Setup([sys.argv[0], "-seed=1", f"-max_len={max_len}", "-timeout=20",
                   "-rss_limit_mb=4096", f"-artifact_prefix={out}/{name.replace(':', '_')}-",
                   str(corpus)], one_input)
    atheris.Fuzz()


# --- every target ---------------------------------------------------------------------------

def run_target(name: str, runs: int, out: Path) -> dict:
    log = out / f"{name.replace(':', '_')}.log"
    with log.open("wb") as stream:
        code = subprocess.run([sys.executable, __file__, "--worker", name, "--runs", str(runs),
                               "--out", str(out)], stdout=stream, stderr=subprocess.STDOUT,
                              cwd=HERE).returncode
    result_file = out / f"{name.replace(':', '_')}.json"
    if code == 0 and result_file.exists():
        return {**json.loads(result_file.read_text()), "crashed": False}
    tail = log.read_text(errors="replace").splitlines()[-25:]
    return {"target": name, "inputs": None, "crashed": True, "exit": code, "log": str(log),
            "tail": tail}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the budget")
    parser.add_argument("--only", default="", help="targets whose name contains this")
    parser.add_argument("--jobs", type=int, default=2, help="targets run at once")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for logs, tallies, corpora and crash inputs "
                             "(default: a new one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.worker:
        worker(args.worker, args.runs, args.out)
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="telemon-fuzz-run-"))
    out.mkdir(parents=True, exist_ok=True)
    names = [name for name in target_names() if args.only in name]
    budget = {name: max(1, int(BUDGET[name.partition(":")[0]] * args.scale)) for name in names}
    print(f"fuzzing {len(names)} target(s), {sum(budget.values()):,} inputs, {args.jobs} at "
          f"a time; logs in {out}", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda name: run_target(name, budget[name], out), names))
    wall = timedelta(seconds=round(time.monotonic() - started))
    for result in results:
        if result["crashed"]:
            print(f"\n{result['target']}: CRASHED (exit {result['exit']}), see {result['log']}")
            print("\n".join(f"    {line}" for line in result["tail"]))
            continue
        print(f"\n{result['target']}: {result['inputs']:,} inputs in {result['seconds']} s, "
              f"{result['accepted']:,} accepted, {result['rejected']:,} rejected, crashes: 0")
        for reason, count in list(result["reasons"].items())[:6]:
            print(f"    {count:>8,}  {reason}")
    crashed = [r["target"] for r in results if r["crashed"]]
    tried = sum(r["inputs"] or 0 for r in results)
    print(f"\ntotal: {tried:,} inputs over {len(results)} targets in {wall} (wall), "
          f"crashes: {len(crashed)}{' (' + ', '.join(crashed) + ')' if crashed else ''}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())

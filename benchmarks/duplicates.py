"""Near-duplicate grouping (transfer_learning/duplicates.py `groups`) at scale: the tiled search against the exact
search it replaced (kept as the reference in benchmarks/duplicates_reference.py, one copy for the benchmark and the
tests), side by side.

    .venv/bin/python benchmarks/duplicates.py             # frames 2k/10k/50k, random 100k, lookalike 10k
    .venv/bin/python benchmarks/duplicates.py --smallest  # a few seconds: what tests/test_duplicates.py runs

Cases: `frames N` is N near-identical frames of one scene (64x48, each with its own noise of +-2 levels and shifted by
0, 1 or 2 pixels: every frame is a near-duplicate of many, frames 2 pixels apart are not near-duplicates, yet all are
linked through the 1-pixel ones); `random N` is N distinct random fingerprints (buckets of about 12-24 hashes);
`lookalike N` is the worst case of both searches: N images with one dHash and random thumbnails (look-alikes that are
different pictures), so every pair is checked and none is near.
Each measurement runs in its own process: seconds of the `groups` call, and the process's peak resident memory while
it ran (the peak is reset after the fingerprints are made, /proc/self/clear_refs) and, in brackets, that peak less
what the process held before the call: the grouping's own memory (scipy.sparse, which the new search imports at its
first merge, 23 MB, is imported before, in both). The old search runs under an address-space limit (--old-limit-gb):
past it, it is reported as out of memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = [("frames", 2_000), ("frames", 10_000), ("frames", 50_000), ("random", 100_000), ("lookalike", 10_000)]
SMALLEST = [("frames", 300), ("random", 2_000)]


def memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def fingerprints(case: str, n: int):
    """-> list of duplicates.Fingerprint, and the key of each (a stand-in for the sha256 of its file)."""
    import numpy as np

    from duplicates_reference import frames
    from transfer_learning import duplicates

    rng = np.random.default_rng(0)
    if case == "frames":
        prints = [duplicates.fingerprint(pixels) for pixels in frames(n)]
    else:
        dhashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
        if case == "lookalike":
            dhashes[:] = dhashes[0]
        thumbnails = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        prints = [duplicates.Fingerprint(rng.bytes(32).hex(), int(h), t) for h, t in zip(dhashes, thumbnails)]
    return prints, [hashlib.sha256(f"{case}{i}".encode()).hexdigest() for i in range(n)]


def measure(implementation: str, case: str, n: int) -> dict:
    """Runs in the child process."""
    import scipy.sparse.csgraph  # noqa: F401  imported by the new search's first merge: measured apart from the search

    from duplicates_reference import exact_groups
    from transfer_learning import duplicates

    prints, keys = fingerprints(case, n)
    if implementation == "new":
        prints = duplicates.Fingerprints.of(prints)
    before = memory_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current resident memory
    start = time.perf_counter()
    result = duplicates.groups(prints, keys) if implementation == "new" else exact_groups(prints, keys)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mb": memory_mb("VmHWM"),
        "before_mb": before,
        "groups": len(set(result)),
        "digest": hashlib.sha256("\n".join(result).encode()).hexdigest(),
    }


def run(implementation: str, case: str, n: int, limit_gb: float | None, timeout: float) -> dict:
    """One measurement in a child process (under an address-space limit of `limit_gb`, if given)."""

    def limit():
        if limit_gb:
            resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30),) * 2)

    start = time.perf_counter()
    try:
        child = subprocess.run(
            [sys.executable, __file__, "--child", implementation, case, str(n)],
            capture_output=True,
            text=True,
            preexec_fn=limit,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"over {timeout:.0f} s"}
    if child.returncode != 0:
        out_of_memory = (
            any(text in child.stderr for text in ("MemoryError", "Unable to allocate")) or child.returncode < 0
        )
        if out_of_memory and limit_gb:
            return {"failed": f"over {limit_gb:g} GB (stopped after {time.perf_counter() - start:.0f} s)"}
        return {"failed": " ".join(child.stderr.strip().splitlines()[-1:])}
    return json.loads(child.stdout.splitlines()[-1])


def cells(result: dict) -> list[str]:
    if "failed" in result:
        return [result["failed"], "-"]
    grouping = result["peak_mb"] - result["before_mb"]
    return [f"{result['seconds']:.2f}", f"{result['peak_mb']:.0f} ({grouping:+.0f})"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smallest", action="store_true", help=f"only {SMALLEST} (seconds)")
    parser.add_argument("--cases", nargs="*", metavar="CASE:N", help="e.g. frames:2000 random:100000 (default: all)")
    parser.add_argument("--old-limit-gb", type=float, default=4.0, help="address-space limit of the old search")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement (default 900)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        implementation, case, n = args.child
        print(json.dumps(measure(implementation, case, int(n))))
        return
    cases = SMALLEST if args.smallest else FULL
    if args.cases:
        cases = [(case, int(n)) for case, n in (text.split(":") for text in args.cases)]
    print("| case | old s | old peak MB (grouping) | new s | new peak MB (grouping) | groups | same groups |")
    print("|---|---|---|---|---|---|---|")
    wrong = False
    for case, n in cases:
        old = run("old", case, n, args.old_limit_gb, args.timeout)
        new = run("new", case, n, None, args.timeout)
        same = "-" if "failed" in old or "failed" in new else "yes" if old["digest"] == new["digest"] else "NO"
        wrong |= same == "NO" or "failed" in new
        row = [f"{case} {n:,}"] + cells(old) + cells(new) + [str(new.get("groups", "-")), same]
        print("| " + " | ".join(row) + " |", flush=True)
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()

"""Sealing and opening one large backup file: throughput and peak memory.

Writes --mb of random bytes (as incompressible as a gzip-compressed dump), then does what
``archive.take_backup`` does to each file of a dump (SHA-256 and tink streaming AEAD in one
pass) and what ``archive.open_set`` does to it (SHA-256 of the stored bytes, then decryption
with every segment's tag checked and the plaintext's SHA-256). Prints JSON: MB/s of each phase
and the resident memory before, and its peak during each phase, which must not grow with the
file. The peak is Linux's VmHWM, reset before each phase (``ru_maxrss`` is not: it keeps the
peak of the process that started this one, pytest's for instance).

Usage: python benchmarks/drill_seal.py [--mb 300] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from runbooks_lib.drill import keys, seal


def status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    return status_mb("VmRSS") or 0.0


def peak_rss_mb(reset: bool = False) -> float:
    """The peak resident memory since the last reset (ru_maxrss where /proc cannot tell)."""
    if reset:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
    return status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--dir", default=None, help="where the files go (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        src, sealed, opened = work / "plain.dat", work / "plain.dat.tink", work / "opened.dat"
        with open(src, "wb") as fh:
            for _ in range(args.mb):
                fh.write(os.urandom(1 << 20))
        key = keys.parse(keys.generate(), "a generated key")
        size = args.mb * (1 << 20) / 1e6
        os.sync()  # each phase pays for its own writes, not for the previous one's
        base = rss_mb()
        peak_rss_mb(reset=True)
        t0 = time.monotonic()
        entry = seal.seal_file(src, sealed, key, "plain.dat")
        seal_s = time.monotonic() - t0
        seal_peak = peak_rss_mb()
        os.sync()
        peak_rss_mb(reset=True)
        t0 = time.monotonic()
        stored_ok = seal.sha256_file(sealed)[0] == entry["stored_sha256"]
        check_s = time.monotonic() - t0
        digest, _ = seal.unseal_file(sealed, opened, key, "plain.dat")
        open_s = time.monotonic() - t0
        open_peak = peak_rss_mb()
    print(json.dumps({
        "mb": round(size, 1), "seal_s": round(seal_s, 3), "seal_mb_s": round(size / seal_s, 1),
        "open_s": round(open_s, 3), "open_mb_s": round(size / open_s, 1),
        "open_phases_s": {"stored_sha256": round(check_s, 3), "decrypt": round(open_s - check_s, 3)},
        "verified": stored_ok and digest == entry["sha256"],
        "rss_mb": {"before": round(base, 1), "peak_seal": round(seal_peak, 1),
                   "peak_open": round(open_peak, 1)},
    }))


if __name__ == "__main__":
    main()

"""Steady traffic on the demo application while `make demo` runs: about 20 requests a second.

Usage: demo-traffic.py URL [RATE]. Failed requests (nothing deployed yet, a bad canary) are counted,
not fatal; once a minute it prints what answered, e.g. "1.0.0: 1180, 2.0.0: 20, errors: 3".
"""

from __future__ import annotations

import collections
import json
import sys
import time
import urllib.error
import urllib.request


def main() -> None:
    url = sys.argv[1]
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    seen: collections.Counter[str] = collections.Counter()
    last = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/version", timeout=5) as response:
                seen[str(json.loads(response.read()).get("version"))] += 1
        except (OSError, ValueError, urllib.error.URLError):
            seen["errors"] += 1
        if time.monotonic() - last >= 60:
            print(", ".join(f"{k}: {v}" for k, v in sorted(seen.items())), flush=True)
            seen.clear()
            last = time.monotonic()
        time.sleep(1.0 / rate)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass

"""The adapter cache's miss and hit cost alone (`soma bench live`'s cache measurement without the live
session), to compare two versions of `SessionAdapters.load` in one sitting on an idle machine.

    .venv/bin/python scripts/adapter_cache_miss.py                      # this checkout
    git worktree add /tmp/old 31990e2
    PYTHONPATH=/tmp/old/services .venv/bin/python scripts/adapter_cache_miss.py   # the code before
"""

import json
import sys

import soma
from soma.bench.live import measure_cache
from soma.config import Settings

if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"soma from {soma.__file__}", file=sys.stderr)
    for _ in range(rounds):
        c = measure_cache(Settings(), 10.0, 200)
        print(json.dumps({k: c[k] for k in ("adapter_bytes", "miss_ms", "miss_ms_max", "hit_ms_median")}))

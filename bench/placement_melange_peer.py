"""Run AIBrix's Mélange solver on problems read from stdin (JSON); print results as JSON.

Runs in AIBrix's own virtual environment (``pip install aibrix numpy pulp``), not in
cunliang's: bench/placement.py calls it as a subprocess. Input::

    [{"rate": tokens_per_s, "types": {name: {"cost": yuan_per_hour, "tput": tokens_per_s}}}]

Output: one ``{"counts": {name: n}, "cost": yuan_per_hour, "seconds": s}`` per problem
(``counts`` null where Mélange reports no optimal solution).
"""

from __future__ import annotations

import json
import sys
import time

from aibrix.gpu_optimizer.optimizer.solver.melange.solver import MelangeSolver

SLICE_FACTOR = 8  # Mélange's default granularity in its examples


def main() -> None:
    problems = json.load(sys.stdin)
    out = []
    for p in problems:
        info = {name: {"cost": t["cost"], "tputs": [[t["tput"]]]} for name, t in p["types"].items()}
        started = time.perf_counter()
        got = MelangeSolver([[1.0]], p["rate"], info, SLICE_FACTOR).run()
        seconds = time.perf_counter() - started
        if got is None:
            out.append({"counts": None, "cost": None, "seconds": seconds})
            continue
        cost = got.pop("cost")
        out.append({"counts": got, "cost": cost, "seconds": seconds})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

"""DAPPER's side of the Lorenz-96 LETKF comparison in ``bench_letkf.py``.

Runs in DAPPER's own virtual environment (``.venv-dapper``, made by
``python benchmarks/bench_letkf.py --setup-dapper``), never in the kit's: it imports only
DAPPER and NumPy. ``bench_letkf.py`` starts it once and sends it one JSON request per
line on stdin, interleaved with the kit's timings; each request is answered with one JSON
line on stdout::

    {"cycles": 200, "mode": "da", "seed": 1}  ->  {"cpu_per_cycle": ..., ...}

Modes:

* ``"full"``: ``xp.assimilate(HMM, xx, yy)`` as DAPPER users run it, statistics included;
  reports DAPPER's own ``rmse.a`` (time mean over the cycles after burn-in).
* ``"da"``: the same ``assimilate`` loop with DAPPER's per-cycle statistics calls
  (``Stats.assess``, ``Stats.write``) made no-ops: forecast, localisation, local
  analyses and post-processing only.

The setting is ``dapper.mods.Lorenz96.sakov2008`` (40 variables, dt = dtObs = 0.05, every
variable observed, R = I) with DAPPER's suggested ``LETKF(N=7, infl=1.04, loc_rad=4)``;
``rot`` comes with the request (the suggested line has ``rot=True``, a random rotation of
the anomalies that the kit's LETKF does not do).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import numpy as np


def run(request: dict) -> dict:
    """Time one assimilation of ``request["cycles"]`` cycles."""
    import dapper
    import dapper.da_methods as da
    import dapper.stats as dstats
    import dapper.tools.progressbar as progressbar
    from dapper.mods.Lorenz96.sakov2008 import HMM

    progressbar.disable_progbar = True
    hmm = HMM.copy()
    cycles = int(request["cycles"])
    hmm.tseq.BurnIn = hmm.tseq.dto * (cycles // 2)    # statistics over the second half
    hmm.tseq.Ko = cycles - 1            # Ko + 1 observation times, one model step each
    dapper.set_seed(int(request.get("seed", 0)))      # DAPPER draws from its global RNG
    xx, yy = hmm.simulate()
    xp = da.LETKF(N=7, infl=1.04, loc_rad=4, rot=bool(request.get("rot", False)))
    saved = dstats.Stats.assess, dstats.Stats.write
    if request["mode"] == "da":
        dstats.Stats.assess = lambda self, *args, **kwargs: None
        dstats.Stats.write = lambda self, *args, **kwargs: None
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        xp.assimilate(hmm, xx, yy, liveplots=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        dstats.Stats.assess, dstats.Stats.write = saved
    n_cycles = hmm.tseq.K
    answer = {"mode": request["mode"], "cycles": n_cycles, "cpu_per_cycle": cpu / n_cycles,
              "wall_per_cycle": wall / n_cycles}
    if request["mode"] == "full":
        xp.stats.average_in_time()
        answer["rmse_a"] = float(xp.avrgs.err.rms.a.val)
    return answer


def main() -> None:
    import dapper

    print(json.dumps({"ready": True, "dapper": dapper.__version__,
                      "numpy": np.__version__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        with contextlib.redirect_stdout(sys.stderr):     # DAPPER's own messages
            answer = run(json.loads(line))
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()

"""Run a scaling study on COMM_WORLD; rank 0 saves the Dataset (for the MPI tests).

Usage: mpiexec -n N python scaling_run.py OUT_DIR '[{"mode": "strong", ...}, ...]' [--direct]

One Dataset ``scaling_{mode}.nc`` per study. With ``--direct`` the script also runs the
experiment of the first study's first size on 1 and on all
ranks through :func:`first_ranks`, gathers both final analyses on rank 0 and saves them
(``direct_p{p}.npy``), so the test can compare full arrays, not only fingerprints.
"""

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from turbda_kit.experiments.l96_ensf import gather_slabs, run_l96_ensf
from turbda_kit.experiments.scaling import ScalingStudy, run_scaling
from turbda_kit.io import write_dataset
from turbda_kit.parallel.mpi import abort_on_exception, first_ranks, sleeping_barrier

out = Path(sys.argv[1])
comm = MPI.COMM_WORLD
with abort_on_exception(comm):
    studies = [ScalingStudy(**kwargs) for kwargs in json.loads(sys.argv[2])]
    for study in studies:
        ds = run_scaling(study, comm, device="cpu", show_progress=False)
        if comm.Get_rank() == 0:
            write_dataset(ds, out / f"scaling_{study.mode}.nc")
    study = studies[0]
    if "--direct" in sys.argv:
        for p in sorted({1, comm.Get_size()}):
            with first_ranks(comm, p) as sub:
                if sub is not None:
                    result = run_l96_ensf(study.experiment(study.sizes[0]), sub, "cpu",
                                          show_progress=False)
                    analysis = gather_slabs(result.analysis, sub)
                    if sub.Get_rank() == 0:
                        np.save(out / f"direct_p{p}.npy", analysis.numpy())
            sleeping_barrier(comm)

"""Run a small distributed L96+EnSF and save the gathered final analysis (for rank-count tests)."""

import sys

import numpy as np
import torch
from mpi4py import MPI

from turbda_kit.experiments.l96_ensf import L96EnSFSettings, gather_slabs, run_l96_ensf
from turbda_kit.filters.ensf import EnSFConfig
from turbda_kit.parallel.mpi import abort_on_exception

out = sys.argv[1]
n_global = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
comm = MPI.COMM_WORLD
with abort_on_exception(comm):
    torch.set_num_threads(1)
    settings = L96EnSFSettings(n_global=n_global, n_members=5, n_cycles=3, steps_per_cycle=5,
                               spinup_steps=50, ensf=EnSFConfig(n_steps=20, block_size=128),
                               seed=7, align=128)
    result = run_l96_ensf(settings, comm, show_progress=False)
    analysis = gather_slabs(result.analysis, comm)
    if comm.Get_rank() == 0:
        np.save(out, analysis.numpy())
        np.save(out.replace(".npy", "_rmse.npy"), result.records["rmse_analysis"])

"""Sub-communicators, the sleeping barrier and the node layout on every rank (for test_mpi).

Usage: mpiexec -n N python mpi_helpers.py OUT.json

Rank 0 writes what every rank saw: the size of its ``first_ranks(comm, p)`` communicator for
each p (0 when it got None), its node layout, and the CPU seconds it used while waiting one
second for rank 0 in :func:`sleeping_barrier`.
"""

import json
import sys
import time

from mpi4py import MPI

from turbda_kit.parallel.mpi import abort_on_exception, first_ranks, node_layout, sleeping_barrier

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
with abort_on_exception(comm):
    sub_sizes = {}
    for p in range(1, size + 1):
        with first_ranks(comm, p) as sub:
            sub_sizes[p] = 0 if sub is None else sub.Get_size()
            if sub is not None:
                assert sub.Get_rank() == rank
    layout = node_layout(comm)
    comm.Barrier()
    if rank == 0:
        time.sleep(1.0)                      # the others wait for this rank
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    sleeping_barrier(comm)
    waited = {"cpu_s": time.process_time() - cpu_start, "wall_s": time.perf_counter() - wall_start}
    seen = comm.gather({"rank": rank, "sub_sizes": sub_sizes, "waited": waited,
                        "layout": [layout.local_rank, layout.local_ranks, layout.node_cpus,
                                   layout.cpus_per_rank]}, root=0)
    if rank == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump(seen, handle)

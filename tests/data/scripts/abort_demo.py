"""Run under mpiexec -n 2: rank 1 raises inside abort_on_exception while rank 0 waits.

Without the context manager rank 0 would block in the barrier forever.
"""

import time

from turbda_kit.parallel.mpi import abort_on_exception

with abort_on_exception() as comm:
    if comm.Get_rank() == 1:
        time.sleep(0.2)
        raise RuntimeError("rank 1 failed on purpose")
    comm.barrier()
print("unreachable: rank 0 passed the barrier", flush=True)

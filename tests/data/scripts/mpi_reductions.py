"""Run under mpiexec: parallel mean/variance and tree reduction; rank 0 saves the results.

Usage: mpiexec -n P python mpi_reductions.py OUT.npz
"""

import sys

import numpy as np

from turbda_kit.parallel.mpi import Moments, block_range, get_comm, parallel_mean_var, tree_reduce


def global_data() -> np.ndarray:
    # Widely spread magnitudes so that the summation order changes the rounding.
    rng = np.random.default_rng(42)
    return rng.standard_normal((37, 3, 4)) * 10.0 ** rng.integers(-6, 6, size=(37, 1, 1))


def main() -> None:
    comm = get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    data = global_data()
    # Uneven blocks; with 3 ranks the last one is empty.
    bounds = [0, 30, 37, 37] if size == 3 else [0, 11, 37]
    local = data[bounds[rank]:bounds[rank + 1]]
    count, mean, var = parallel_mean_var(local, comm, axis=0)
    tree = tree_reduce(len(data), lambda i: Moments.from_array(data[i:i + 1], axis=0),
                       lambda a, b: a.combine(b), comm)
    sums = tree_reduce(len(data), lambda i: data[i].copy(), np.add, comm,
                       owned=block_range(len(data), rank, size))
    if rank == 0:
        np.savez(sys.argv[1], count=count, mean=mean, var=var, tree_mean=tree.mean,
                 tree_m2=tree.m2, tree_count=tree.count, sums=sums)
    comm.barrier()


if __name__ == "__main__":
    main()

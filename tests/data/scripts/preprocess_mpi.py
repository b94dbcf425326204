"""Run preprocess under mpiexec (or serially): the MPI half of the equivalence tests.

Usage: python preprocess_mpi.py NATURE ROOT FMT [FAIL_RANK FAIL_AFTER_CHUNKS]
Split days 0/3/4/6, 3 steps per file, 2 shards per day (the tests' synthetic run).
With FAIL_RANK, that rank raises after writing FAIL_AFTER_CHUNKS chunks (a simulated crash).
"""

import sys

from turbda_kit.data.preprocess import preprocess
from turbda_kit.parallel.mpi import get_comm


def main() -> None:
    nature, root, fmt = sys.argv[1:4]
    comm = get_comm()
    hook = None
    if len(sys.argv) > 4:
        fail_rank, fail_after = int(sys.argv[4]), int(sys.argv[5])
        written = []

        def hook(stage: str, index: int) -> None:
            if stage == "chunk" and comm.Get_rank() == fail_rank:
                written.append(index)
                if len(written) >= fail_after:
                    raise RuntimeError(f"simulated crash after chunk {index}")

    summary = preprocess(nature, root, 0, 3, 4, 6, steps_per_file=3, num_shards=2, fmt=fmt,
                         comm=comm, hook=hook)
    if comm.Get_rank() == 0:
        print(f"SUMMARY chunks_written={summary.chunks_written} "
              f"chunks_skipped={summary.chunks_skipped} days_written={summary.days_written} "
              f"days_skipped={summary.days_skipped}", flush=True)


if __name__ == "__main__":
    main()

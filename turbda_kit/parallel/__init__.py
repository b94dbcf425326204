"""Parallel helpers: MPI (mpi4py), torch.distributed, DeepSpeed/FSDP wrapping, ipyparallel."""

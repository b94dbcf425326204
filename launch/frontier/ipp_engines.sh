#!/bin/bash
# Start an ipyparallel controller and N MPI engines inside a Slurm allocation on Frontier,
# for interactive work from JupyterLab (the engines form one MPI job: mpi4py collectives
# and GPU-aware halo exchanges work across them, exactly as under a batch `srun`).
#
# Inside an allocation (e.g. `salloc -A ABC123 -N 1 -t 01:00:00 -q debug`), from the
# repository root:
#
#   bash launch/frontier/ipp_engines.sh            # 8 engines per node of the allocation
#   bash launch/frontier/ipp_engines.sh 4          # 4 engines
#
# It prints the profile directory and keeps running; Ctrl-C (or SIGTERM) stops the engines
# and the controller. Then, in a Jupyter kernel on a host that can reach this node (e.g.
# JupyterLab started on the allocation's first node, `jupyter lab --no-browser
# --ip=$(hostname)`, reached through an ssh tunnel):
#
#   import ipyparallel as ipp
#   from turbda_kit.experiments.scaling import ScalingStudy, engine_kernel
#   rc = ipp.Client(profile_dir="<the printed profile directory>")
#   rc.wait_for_engines(8)
#   view = rc[:]                          # engine ids are the MPI ranks (ipengine --mpi)
#   ds = view.apply_sync(engine_kernel, ScalingStudy(ranks=(1, 2, 4, 8)))[0]
#
# (From a kernel that is itself inside the allocation, turbda_kit.parallel.engines.mpi_engines(n)
# does all of this in one call; notebooks/04_ensf_scaling.ipynb shows it.)
#
# Environment overrides: IPP_PROFILE_DIR (connection files; default runs/ipp-<job id>),
# TASKS_PER_NODE (8), SRUN (engine launcher used as is).
# Python environment (see launch/lib/env.sh): TURBDA_ENV (a venv or conda prefix, or a
# conda env name), CONDA_ENV (conda), VENV (a venv; TURBDA_VENV is the older name); default
# $REPO/.venv. MODULES overrides the modules loaded (MODULES= loads none; a missing
# `module` command is warned about, not skipped silently).
# Local test without Slurm:  SRUN="mpiexec -n 2" bash launch/frontier/ipp_engines.sh 2
# Set-up (mpi4py against Cray MPICH, ROCm torch): docs/frontier.md.

set -euo pipefail

REPO=${TURBDA_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}
cd "$REPO"
if [ ! -f "$REPO/launch/lib/env.sh" ]; then
    echo "no $REPO/launch/lib/env.sh: submit from the repository root or set TURBDA_REPO" >&2
    exit 2
fi
# shellcheck source=../lib/env.sh
source "$REPO/launch/lib/env.sh"

# shellcheck disable=SC2086
turbda_load_modules ${MODULES-PrgEnv-gnu cray-mpich rocm/6.2.4 craype-accel-amd-gfx90a miniforge3}
turbda_activate

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-7}
# Idle OpenMP threads sleep instead of spinning: ranks, kernels and I/O threads share
# cores (one SQG spin-up: 24.7-30.7 s spinning vs 4.2 s passive on two shared cores).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export MPICH_GPU_SUPPORT_ENABLED=${MPICH_GPU_SUPPORT_ENABLED:-1}
turbda_miopen_cache

TASKS_PER_NODE=${TASKS_PER_NODE:-8}
NODES=${SLURM_NNODES:-1}
N_ENGINES=${1:-$((NODES * TASKS_PER_NODE))}
PROFILE_DIR=${IPP_PROFILE_DIR:-$REPO/runs/ipp-${SLURM_JOB_ID:-local-$$}}
mkdir -p "$PROFILE_DIR"
if [ -n "${SRUN:-}" ]; then
    LAUNCH=$SRUN
elif command -v srun > /dev/null 2>&1; then
    # --overlap: the engines share the allocation with this step (and with the controller).
    LAUNCH="srun --overlap -n $N_ENGINES -c 7 --gpus-per-node=8 --gpu-bind=closest"
else
    LAUNCH="mpiexec -n $N_ENGINES"
fi

controller=""
engines=""
stop() {
    trap - EXIT INT TERM
    # Ask engines and controller to shut down through a client: the engines leave
    # MPI_Finalize together and exit without the tracebacks a signal makes them print.
    # Signal only what is still running after that.
    if [ -n "$controller" ] && [ -f "$PROFILE_DIR/security/ipcontroller-client.json" ]; then
        timeout 30 python -c "import ipyparallel as ipp; ipp.Client(profile_dir='$PROFILE_DIR').shutdown(hub=True, block=True)" \
            > /dev/null 2>&1 || true
    fi
    for _ in $(seq 40); do
        { [ -n "$engines" ] && kill -0 "$engines" 2> /dev/null; } || \
            { [ -n "$controller" ] && kill -0 "$controller" 2> /dev/null; } || break
        sleep 0.5
    done
    [ -n "$engines" ] && kill "$engines" 2> /dev/null || true
    [ -n "$controller" ] && kill "$controller" 2> /dev/null || true
    wait 2> /dev/null || true
    echo "[ipp-engines] stopped"
}
trap stop EXIT
trap 'stop; exit 0' INT TERM

# The controller listens on every interface of this node, so that engines on the other
# nodes and a Jupyter kernel elsewhere can connect; --location names this host in the
# connection files.
# ipykernel 7 engines greet every iopub subscriber, which ipyparallel 9's controller logs
# as "ERROR | Monitor message without topic" once per engine: harmless, filtered out.
ipcontroller --profile-dir="$PROFILE_DIR" --ip='*' --location="$(hostname)" --log-level=WARN \
    2> >(grep --line-buffered -v "Monitor message without topic" >&2) &
controller=$!
for _ in $(seq 120); do
    [ -f "$PROFILE_DIR/security/ipcontroller-engine.json" ] && break
    sleep 1
done
if [ ! -f "$PROFILE_DIR/security/ipcontroller-engine.json" ]; then
    echo "[ipp-engines] the controller did not start (no connection file in $PROFILE_DIR)" >&2
    exit 1
fi

echo "[ipp-engines] $(date -u +%FT%TZ) starting $N_ENGINES MPI engines: $LAUNCH ipengine --mpi"
$LAUNCH ipengine --profile-dir="$PROFILE_DIR" --mpi --log-level=ERROR &
engines=$!
echo "[ipp-engines] profile directory: $PROFILE_DIR"
echo "[ipp-engines] connect with: ipyparallel.Client(profile_dir=\"$PROFILE_DIR\"); Ctrl-C stops"
wait "$engines"

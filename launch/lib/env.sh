# Shared set-up of the turbda_kit launch scripts. Sourced (never run) by launch/*/*.sbatch
# and launch/frontier/ipp_engines.sh after they `cd` to the repository root ($REPO).
#
# Functions:
#   turbda_load_modules MODULE...  `module load MODULE...`; a warning when `module` is missing
#   turbda_activate                activate the kit's Python environment (see below)
#   turbda_per_node CMD...         run CMD once on every node of the job (srun), or here
#   turbda_miopen_cache            node-local MIOpen caches, created on every node
#   turbda_stage_nvme DIR          copy DIR to node-local NVMe on every node; prints the copy
#
# Which Python environment turbda_activate uses (the first one set wins):
#   TURBDA_ENV=PATH|NAME  a venv directory, a conda environment prefix, or a conda env name
#   CONDA_ENV=NAME|PATH   a conda environment (`conda activate`; conda from PATH or CONDA_EXE,
#                         e.g. after `module load miniforge3`)
#   VENV=PATH             a venv (`source PATH/bin/activate`); TURBDA_VENV is the older name
#   none of them          $REPO/.venv if it exists, else the python already on PATH (warned)
# An environment that is named but cannot be activated stops the job (exit 2) rather than
# running the kit with another Python.
#
# Other variables: TURBDA_MODULES_INIT (files tried, in order, to define `module` in a batch
# shell that lacks it), NVME_DIR (node-local directory for turbda_stage_nvme, default
# /mnt/bb/$USER: Frontier's NVMe of a job submitted with `sbatch -C nvme`),
# MIOPEN_USER_DB_PATH / MIOPEN_CUSTOM_CACHE_DIR (default /tmp/miopen-$USER-$SLURM_JOB_ID).

_turbda_warn() {
    echo "[env] warning: $*" >&2
}

_turbda_die() {
    echo "[env] error: $*" >&2
    exit 2
}

turbda_load_modules() {
    [ "$#" -gt 0 ] || return 0
    if ! command -v module > /dev/null 2>&1; then
        # Non-login batch shells may lack the `module` function: try the usual init files.
        local init
        for init in ${TURBDA_MODULES_INIT-/etc/profile.d/lmod.sh /etc/profile.d/modules.sh}; do
            if [ -f "$init" ]; then
                set +u
                # shellcheck disable=SC1090
                source "$init"
                set -u
                break
            fi
        done
    fi
    if command -v module > /dev/null 2>&1; then
        set +u
        module load "$@" || _turbda_die "module load $* failed"
        set -u
        echo "[env] modules loaded: $*"
    else
        _turbda_warn "'module' is not available in this shell: NOT loading $* (on Frontier" \
                     "this breaks MPI and ROCm; set MODULES= to skip on purpose)"
    fi
}

_turbda_conda_activate() {
    local spec=$1 conda_exe=${CONDA_EXE:-}
    if [ -z "$conda_exe" ]; then
        conda_exe=$(command -v conda || true)
    fi
    if [ -z "$conda_exe" ]; then
        _turbda_die "conda environment '$spec' asked for, but conda is not on PATH (load" \
                    "miniforge3, set CONDA_EXE, or use VENV=... for a venv)"
    fi
    set +u
    eval "$("$conda_exe" shell.bash hook)" || _turbda_die "'$conda_exe shell.bash hook' failed"
    conda activate "$spec" || _turbda_die "conda activate '$spec' failed"
    set -u
}

turbda_activate() {
    local spec kind
    if [ -n "${TURBDA_ENV:-}" ]; then
        spec=$TURBDA_ENV
        if [ -f "$spec/bin/activate" ] && [ -f "$spec/pyvenv.cfg" ]; then
            kind=venv
        elif [ -d "$spec/conda-meta" ] || [[ "$spec" != */* ]]; then
            kind=conda
        else
            _turbda_die "TURBDA_ENV=$spec is neither a venv (bin/activate and pyvenv.cfg)," \
                        "a conda prefix (conda-meta/) nor a conda environment name"
        fi
    elif [ -n "${CONDA_ENV:-}" ]; then
        spec=$CONDA_ENV
        kind=conda
    elif [ -n "${VENV:-${TURBDA_VENV:-}}" ]; then
        spec=${VENV:-$TURBDA_VENV}
        kind=venv
    elif [ -f "${REPO:-.}/.venv/bin/activate" ]; then
        spec=${REPO:-.}/.venv
        kind=venv
    else
        _turbda_warn "no TURBDA_ENV, CONDA_ENV or VENV and no ${REPO:-.}/.venv: using the" \
                     "python on PATH ($(command -v python || echo none))"
        return 0
    fi
    if [ "$kind" = venv ]; then
        [ -f "$spec/bin/activate" ] || _turbda_die "venv $spec has no bin/activate"
        set +u
        # shellcheck disable=SC1091
        source "$spec/bin/activate"
        set -u
    else
        _turbda_conda_activate "$spec"
    fi
    echo "[env] $kind environment $spec: python $(command -v python || echo none)"
    if ! command -v turbda > /dev/null 2>&1; then
        _turbda_warn "no 'turbda' command in this environment: install the kit into it" \
                     "(docs/frontier.md)"
    fi
}

turbda_per_node() {
    # One task per node inside a Slurm job; here otherwise (local runs, tests).
    if [ -n "${SLURM_JOB_ID:-}" ] && command -v srun > /dev/null 2>&1; then
        srun -N "${SLURM_NNODES:-1}" --ntasks-per-node=1 "$@"
    else
        "$@"
    fi
}

turbda_miopen_cache() {
    # MIOpen's kernel database in node-local /tmp: its default ($HOME/.config/miopen) is a
    # shared file system that many ranks would lock at once. Every node needs the directory.
    export MIOPEN_USER_DB_PATH=${MIOPEN_USER_DB_PATH:-/tmp/miopen-${USER:-turbda}-${SLURM_JOB_ID:-local}}
    export MIOPEN_CUSTOM_CACHE_DIR=${MIOPEN_CUSTOM_CACHE_DIR:-$MIOPEN_USER_DB_PATH}
    turbda_per_node mkdir -p "$MIOPEN_USER_DB_PATH" "$MIOPEN_CUSTOM_CACHE_DIR" \
        || _turbda_die "could not create the MIOpen cache $MIOPEN_USER_DB_PATH on every node"
}

turbda_stage_nvme() {
    # Copy directory $1 to node-local storage on every node (one task per node) and print
    # the copy's path on stdout (messages go to stderr): DATA=$(turbda_stage_nvme "$DATA").
    local src=$1 root dest
    [ -d "$src" ] || _turbda_die "STAGE_NVME=1: '$src' is not a directory (set DATA to the" \
                                 "shard root written by 02_preprocess)"
    src=$(cd "$src" && pwd)
    root=${NVME_DIR:-/mnt/bb/${USER:-turbda}}
    dest=$root/turbda-$(basename "$src")-${SLURM_JOB_ID:-local}
    echo "[stage] copying $src to $dest on every node" >&2
    # shellcheck disable=SC2016
    turbda_per_node bash -c '
        if [ ! -d "$1" ] || [ ! -w "$1" ]; then
            echo "[stage] $1 is missing or not writable on $(hostname): submit with" \
                 "sbatch -C nvme (Frontier) or set NVME_DIR" >&2
            exit 2
        fi
        mkdir -p "$2" && cp -r "$3"/. "$2"/' _ "$root" "$dest" "$src" >&2 \
        || _turbda_die "staging $src to $dest failed"
    echo "[stage] done: $(du -sh "$dest" 2> /dev/null | cut -f1) in $dest" >&2
    echo "$dest"
}

"""Launch scripts without a cluster: syntax, environment activation, modules, per-node set-up.

Fake ``conda``, ``module``, ``srun`` and venvs stand in for the cluster's; the scripts'
shared functions (``launch/lib/env.sh``) are exercised one by one, then two whole scripts
run with a fake ``turbda`` that prints what it was asked to run.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "launch" / "lib" / "env.sh"
SCRIPTS = sorted(p for p in [*REPO.glob("launch/*/*.sbatch"), *REPO.glob("launch/*/*.sh")]
                 if p.parent.name != "lib")
BASE_PATH = "/usr/bin:/bin"


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _fake_python_env(root: Path, name: str, venv: bool) -> Path:
    """A venv (pyvenv.cfg, bin/activate) or a conda prefix (conda-meta/) whose python and
    turbda say who they are."""
    bindir = root / "bin"
    _executable(bindir / "python", f"#!/bin/sh\necho {name}-python \"$@\"\n")
    _executable(bindir / "turbda", f"#!/bin/sh\necho {name}-turbda \"$@\"\n")
    if venv:
        (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
        (bindir / "activate").write_text(f'VIRTUAL_ENV="{root}"\nexport VIRTUAL_ENV\n'
                                         f'PATH="{bindir}:$PATH"\nexport PATH\n')
    else:
        (root / "conda-meta").mkdir()
    return root


def _fake_conda(bindir: Path, envs: Path) -> None:
    """A ``conda`` whose ``shell.bash hook`` defines a ``conda activate`` that puts
    ``envs/NAME/bin`` (or ``PREFIX/bin``) first on PATH."""
    hook = ('conda() { if [ "$1" = activate ]; then case "$2" in */*) p="$2";; '
            f'*) p="{envs}/$2";; esac; [ -d "$p" ] || return 1; export CONDA_PREFIX="$p"; '
            'export PATH="$p/bin:$PATH"; fi; }')
    _executable(bindir / "conda",
                f"#!/bin/sh\n[ \"$1 $2\" = 'shell.bash hook' ] && cat <<'HOOK'\n{hook}\nHOOK\n")


def _fake_srun(bindir: Path, log: Path) -> None:
    """An ``srun`` that logs its arguments and runs the command after its options."""
    _executable(bindir / "srun", f'#!/bin/bash\necho "srun $*" >> "{log}"\n'
                'while [ $# -gt 0 ]; do case "$1" in -N|-n|-c) shift 2;; -*) shift;; '
                '*) break;; esac; done\nexec "$@"\n')


def _bash(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    script = f'set -euo pipefail\nREPO="{REPO}"\nsource "{LIB}"\n{code}\n'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)


@pytest.fixture
def clean_env(tmp_path) -> dict[str, str]:
    """An environment with no Python env selection, no Slurm and no module system."""
    keep = {k: v for k, v in os.environ.items()
            if k in ("HOME", "USER", "LANG", "TMPDIR") and v}
    return {**keep, "PATH": f"{tmp_path / 'bin'}:{BASE_PATH}", "TURBDA_MODULES_INIT": ""}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_launch_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert 'source "$REPO/launch/lib/env.sh"' in text and "turbda_activate" in text
    assert "python -m turbda_kit.experiments.scaling" not in text       # no library CLI


def test_library_parses():
    assert subprocess.run(["bash", "-n", str(LIB)]).returncode == 0


def test_activates_a_venv_given_by_venv_turbda_venv_or_turbda_env(tmp_path, clean_env):
    venv = _fake_python_env(tmp_path / "myvenv", "venv", venv=True)
    for variable in ("VENV", "TURBDA_VENV", "TURBDA_ENV"):
        proc = _bash("turbda_activate; python", {**clean_env, variable: str(venv)}, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == "venv-python", variable
        assert f"[env] venv environment {venv}" in proc.stdout


def test_activates_a_conda_environment_by_name_or_prefix(tmp_path, clean_env):
    envs = tmp_path / "conda" / "envs"
    _fake_python_env(envs / "turbda", "conda", venv=False)
    _fake_conda(tmp_path / "bin", envs)
    for variable, value in (("CONDA_ENV", "turbda"), ("TURBDA_ENV", "turbda"),
                            ("TURBDA_ENV", str(envs / "turbda")),
                            ("CONDA_ENV", str(envs / "turbda"))):
        proc = _bash("turbda_activate; python", {**clean_env, variable: value}, tmp_path)
        assert proc.returncode == 0, (variable, value, proc.stderr)
        assert proc.stdout.splitlines()[-1] == "conda-python", (variable, value)
        assert "[env] conda environment" in proc.stdout


def test_turbda_env_wins_and_a_missing_environment_stops_the_job(tmp_path, clean_env):
    venv = _fake_python_env(tmp_path / "a", "first", venv=True)
    other = _fake_python_env(tmp_path / "b", "second", venv=True)
    proc = _bash("turbda_activate; python", {**clean_env, "TURBDA_ENV": str(venv),
                                              "VENV": str(other)}, tmp_path)
    assert proc.stdout.splitlines()[-1] == "first-python"
    proc = _bash("turbda_activate; echo unreachable", {**clean_env, "VENV": str(tmp_path / "no")},
                 tmp_path)
    assert proc.returncode == 2 and "has no bin/activate" in proc.stderr
    assert "unreachable" not in proc.stdout
    proc = _bash("turbda_activate", {**clean_env, "CONDA_ENV": "turbda"}, tmp_path)
    assert proc.returncode == 2 and "conda is not on PATH" in proc.stderr
    proc = _bash("turbda_activate", {**clean_env, "TURBDA_ENV": str(tmp_path)}, tmp_path)
    assert proc.returncode == 2 and "neither a venv" in proc.stderr
    # nothing named, no .venv: the python on PATH, with a warning
    proc = _bash("REPO=/nonexistent; turbda_activate; echo went-on", clean_env, tmp_path)
    assert proc.returncode == 0 and "went-on" in proc.stdout and "warning" in proc.stderr


def test_missing_module_command_is_warned_not_skipped_silently(tmp_path, clean_env):
    proc = _bash("turbda_load_modules PrgEnv-gnu rocm/6.2.4; echo went-on", clean_env, tmp_path)
    assert proc.returncode == 0 and "went-on" in proc.stdout
    assert "warning" in proc.stderr and "NOT loading PrgEnv-gnu rocm/6.2.4" in proc.stderr
    proc = _bash("turbda_load_modules; echo nothing-asked", clean_env, tmp_path)
    assert proc.stderr == "" and "nothing-asked" in proc.stdout
    log = tmp_path / "module.log"
    _executable(tmp_path / "bin" / "module", f'#!/bin/sh\necho "$*" >> "{log}"\n')
    proc = _bash("turbda_load_modules PrgEnv-gnu rocm/6.2.4", clean_env, tmp_path)
    assert proc.returncode == 0 and log.read_text() == "load PrgEnv-gnu rocm/6.2.4\n"
    _executable(tmp_path / "bin" / "module", "#!/bin/sh\nexit 1\n")
    proc = _bash("turbda_load_modules nosuchmodule", clean_env, tmp_path)
    assert proc.returncode == 2 and "module load nosuchmodule failed" in proc.stderr


def test_miopen_caches_are_made_on_every_node(tmp_path, clean_env):
    log = tmp_path / "srun.log"
    _fake_srun(tmp_path / "bin", log)
    cache = tmp_path / "node-local" / "miopen"
    env = {**clean_env, "SLURM_JOB_ID": "42", "SLURM_NNODES": "3",
           "MIOPEN_USER_DB_PATH": str(cache)}
    proc = _bash('turbda_miopen_cache; echo "$MIOPEN_USER_DB_PATH $MIOPEN_CUSTOM_CACHE_DIR"',
                 env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(cache), str(cache)] and cache.is_dir()
    assert log.read_text() == f"srun -N 3 --ntasks-per-node=1 mkdir -p {cache} {cache}\n"
    # outside a job (or without srun) the directory is made here; the default is per job
    proc = _bash('turbda_miopen_cache; echo "$MIOPEN_USER_DB_PATH"',
                 {**clean_env, "USER": "me"}, tmp_path)
    assert proc.stdout.strip() == "/tmp/miopen-me-local"


def test_nvme_staging_copies_the_shards_once_per_node(tmp_path, clean_env):
    shards = tmp_path / "lustre" / "shards"
    (shards / "train").mkdir(parents=True)
    (shards / "train" / "0.npz").write_bytes(b"x" * 100)
    (shards / "normalize_mean.npz").write_bytes(b"m")
    nvme = tmp_path / "mnt-bb"
    nvme.mkdir()
    log = tmp_path / "srun.log"
    _fake_srun(tmp_path / "bin", log)
    env = {**clean_env, "NVME_DIR": str(nvme), "SLURM_JOB_ID": "7", "SLURM_NNODES": "2"}
    proc = _bash(f'DATA=$(turbda_stage_nvme "{shards}"); echo "data=$DATA"', env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    staged = nvme / "turbda-shards-7"
    assert proc.stdout.strip() == f"data={staged}"
    assert (staged / "train" / "0.npz").read_bytes() == b"x" * 100
    assert (staged / "normalize_mean.npz").exists()
    assert log.read_text().startswith("srun -N 2 --ntasks-per-node=1 bash -c")
    # no NVMe on the node (a job without `sbatch -C nvme`): the job stops with the fix
    proc = _bash(f'DATA=$(turbda_stage_nvme "{shards}"); echo unreachable',
                 {**env, "NVME_DIR": str(tmp_path / "absent")}, tmp_path)
    assert proc.returncode == 2 and "sbatch -C nvme" in proc.stderr
    assert "unreachable" not in proc.stdout


def test_frontier_training_script_trains_from_the_staged_copy(tmp_path, clean_env):
    venv = _fake_python_env(tmp_path / "venv", "fake", venv=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "metadata.json").write_text("{}")
    env = {**clean_env, "VENV": str(venv), "STAGE_NVME": "1", "DATA": str(shards),
           "NVME_DIR": str(tmp_path), "SRUN": "env", "CONFIG": "tiny", "OUT": "runs/x",
           "TURBDA_REPO": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "launch" / "frontier" / "train_vit.sbatch"),
                           "-p", "max_steps", "3"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = [line for line in proc.stdout.splitlines() if line.startswith("fake-turbda")]
    assert len(run) == 1
    assert f"-p data_root {tmp_path / 'turbda-shards-local'} -p max_steps 3" in run[0]
    assert (tmp_path / "turbda-shards-local" / "metadata.json").exists()
    assert "NOT loading PrgEnv-gnu" in proc.stderr               # no module system here


def test_frontier_scaling_script_states_threads_and_merges_with_the_benchmark(tmp_path,
                                                                              clean_env):
    venv = _fake_python_env(tmp_path / "venv", "fake", venv=True)
    env = {**clean_env, "VENV": str(venv), "MODULES": "", "SRUN": "env",
           "NODE_COUNTS": "1 2", "TASKS_PER_NODE": "2", "OUT": str(tmp_path / "out"),
           "TURBDA_REPO": str(REPO)}
    # a finished node-count run, so that the merge step runs (with the fake python)
    (tmp_path / "out" / "nodes-1").mkdir(parents=True)
    (tmp_path / "out" / "nodes-1" / "scaling_weak.nc").write_bytes(b"")
    proc = subprocess.run(["bash", str(REPO / "launch" / "frontier" / "ensf_scaling.sbatch")],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = [line for line in proc.stdout.splitlines() if line.startswith("fake-turbda")]
    assert len(runs) == 2 and all("-p threads_per_rank 1" in r for r in runs)
    # the first launch (1 node x 2 tasks) sweeps 1 and 2 ranks, the second runs 4
    assert runs[0].endswith("-p ranks [1, 2]") and runs[1].endswith("-p ranks [4]")
    merge = [line for line in proc.stdout.splitlines() if line.startswith("fake-python")]
    assert merge == [f"fake-python benchmarks/bench_ensf_scaling.py combine -o "
                     f"{tmp_path / 'out'}/scaling_weak.nc --summary --plots "
                     f"{tmp_path / 'out'}/nodes-1/scaling_weak.nc"]
    assert proc.stderr.count("warning") == 0                     # MODULES= skips on purpose


def test_environment_file_leaves_torch_mpi4py_and_the_kit_to_the_site():
    import yaml

    spec = yaml.safe_load((REPO / "environment.yml").read_text())
    names = [d.split("=")[0].split(">")[0].strip() for d in spec["dependencies"]
             if isinstance(d, str)]
    pip = [d for d in spec["dependencies"] if isinstance(d, dict)]
    # no pip section: `-e .` (or deepspeed) there would pull a default torch before the
    # site's ROCm/CUDA build; conda's mpi4py would bring its own MPI instead of the site's
    assert pip == []
    assert not {"torch", "pytorch", "mpi4py", "deepspeed", "mpich", "openmpi"} & set(names)
    for needed in ("xarray", "papermill", "ipyparallel", "holoviews", "h5py", "dask"):
        assert needed in names

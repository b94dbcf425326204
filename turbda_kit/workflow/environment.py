"""Environment defaults for the processes the kit starts (kernels, MPI engines).

With OpenMP's default (active) wait policy, idle threads spin on their cores; several
processes sharing a few cores then starve each other (one SQG spin-up: 24.7-30.7 s active,
4.2 s passive on two shared cores). The OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when
it is loaded (at ``import torch``), so the setting must be in a process's environment when
it starts: the kit puts ``PASSIVE`` there unless the user chose a policy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OMP_WAIT_POLICY = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"

# Variables every process the kit starts gets unless the user set them.
PROCESS_DEFAULTS: dict[str, str] = {OMP_WAIT_POLICY: PASSIVE}
# Names apply_process_defaults() set in this process (the user had not).
_set_by_kit: set[str] = set()


def with_process_defaults(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) plus :data:`PROCESS_DEFAULTS` where unset.

    Example
    -------
    >>> with_process_defaults({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"]
    'ACTIVE'
    >>> with_process_defaults({})["OMP_WAIT_POLICY"]
    'PASSIVE'
    """
    merged = dict(os.environ if env is None else env)
    for name, value in PROCESS_DEFAULTS.items():
        if not merged.get(name, "").strip():
            merged[name] = value
    return merged


def apply_process_defaults() -> None:
    """Set :data:`PROCESS_DEFAULTS` in ``os.environ`` where unset, for every child to inherit.

    Called by ``turbda`` at start-up, before torch (and its OpenMP runtime) is imported.
    """
    for name, value in PROCESS_DEFAULTS.items():
        if not os.environ.get(name, "").strip():
            os.environ[name] = value
            _set_by_kit.add(name)


def wait_policy_warning(env: Mapping[str, str] | None = None) -> str | None:
    """A one-line warning when the user's ``OMP_WAIT_POLICY`` is unset or active, else None.

    With ``env`` None this process's environment is read, where a value that
    :func:`apply_process_defaults` put there counts as unset.
    """
    if env is None:
        policy = "" if OMP_WAIT_POLICY in _set_by_kit else os.environ.get(OMP_WAIT_POLICY, "")
    else:
        policy = env.get(OMP_WAIT_POLICY, "")
    policy = policy.strip()
    if policy.upper() == PASSIVE:
        return None
    state = "unset" if not policy else policy
    return (f"OMP_WAIT_POLICY is {state} in this shell: idle OpenMP threads spin, so processes "
            f"sharing cores slow each other down several times; export OMP_WAIT_POLICY=PASSIVE "
            f"(turbda run/pipeline set it for the kernels they start, the kit's kernel spec for "
            f"JupyterLab, but not for other programs you start)")

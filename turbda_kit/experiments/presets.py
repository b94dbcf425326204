"""Experiment presets named after the studies they reproduce, with the scores reported there.

Each preset is data (a frozen dataclass); :func:`build_experiment` turns one into the
engine's inputs. ``reported`` holds the published mean scores (RMSE over the cycles after
spin-up, in the state's units: K for SQG), so a run can be set beside them.

SQG presets (12-hourly cycles of the 64² coupled-experiment model, 20 members):

* ``bao2024_sqg_linear`` — every grid point of both levels observed, error 1 K;
  LETKF 2200 km (sqgturb's cut-off, i.e. half-width 1100 km) / RTPS 0.3.
* ``bao2024_sqg_arctan`` — ``arctan`` of every value observed, error 0.01;
  LETKF 2800 km / RTPS 0.8.
* ``yin2024_sqg_shocks`` — as the linear case, with the jump-noise ("shock") process on
  the truth that is observed and scored. Reported: SQG+EnSF ≈ 1.05 K, SQG+LETKF ≈ 5.4 K,
  SQG free run ≈ 9.6 K.

Lorenz-96 cross-checks of the LETKF (DAPPER's benchmark settings):

* ``sakov2008`` — 40 variables, dt 0.05, every variable observed every step, R = I;
  LETKF N=7, inflation 1.04, localisation radius 4 → RMSE ≈ 0.22.
* ``hoteit2015`` — as above with N=10, radius 6 → RMSE ≈ 0.20.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..filters.ensf import EnSFConfig
from ..filters.letkf import LETKFConfig

HOURS = 3600.0
# Localisation conventions (see turbda_kit.filters.localization): our radius is the
# Gaspari-Cohn half-width c. sqgturb's "2200 km" is the cut-off 2c; DAPPER's loc_rad is c/1.82.
DAPPER_TO_HALF_WIDTH = 1.82


@dataclass(frozen=True)
class DAPreset:
    """Settings of one published DA experiment.

    Attributes
    ----------
    name : str
    model : str
        ``"sqg"`` or ``"lorenz96"``.
    model_settings : dict
        SQG: name of an SQG preset (``turbda_kit.models.sqg.sqg_preset``); Lorenz-96:
        ``n``, ``forcing``, ``dt``.
    obs : str
        ``"identity"`` or ``"arctan"`` (every state value observed).
    obs_error_std : float
        Observation error std (obs units: K for linear SQG obs).
    steps_per_cycle : int
        Model steps per cycle (Lorenz-96; SQG derives it from ``cycle_seconds``).
    n_cycles, spinup_cycles, n_members : int
    initial_spread : float
        Std of the initial perturbations around the truth (state units).
    letkf : LETKFConfig
    ensf : EnSFConfig
    shocks : bool
        Apply the jump-noise process (:class:`turbda_kit.obs.noise.ShockProcess`).
    reported : dict of str to float
        Published mean RMSE per filter (``"ensf"``, ``"letkf"``, ``"free"``).
    source : str
        Where the numbers come from.
    cycle_seconds : float or None
        SQG: cycle length in model seconds (12 h); steps = cycle_seconds / dt.
    """

    name: str
    model: str
    model_settings: dict[str, Any]
    obs: str
    obs_error_std: float
    steps_per_cycle: int
    n_cycles: int
    spinup_cycles: int
    n_members: int
    initial_spread: float
    letkf: LETKFConfig
    ensf: EnSFConfig = field(default_factory=EnSFConfig)
    shocks: bool = False
    reported: dict[str, float] = field(default_factory=dict)
    source: str = ""
    cycle_seconds: float | None = None

    def replace(self, **changes: Any) -> DAPreset:
        """A copy with some fields changed (e.g. fewer cycles for a quick run)."""
        return dataclasses.replace(self, **changes)

    def with_filter_settings(self, filter_name: str, changes: dict[str, Any] | None
                             ) -> DAPreset:
        """A copy whose EnSF or LETKF config has some fields changed.

        Parameters
        ----------
        filter_name : {"ensf", "letkf"}
        changes : dict or None
            Field changes of :class:`~turbda_kit.filters.ensf.EnSFConfig` or
            :class:`~turbda_kit.filters.letkf.LETKFConfig` (validated by the config).

        Raises
        ------
        InputError
            For another filter name or a field the config does not have.
        """
        if filter_name not in ("ensf", "letkf"):
            raise InputError(f"filter_name={filter_name!r}: filter settings exist for 'ensf' "
                             f"and 'letkf'")
        config = getattr(self, filter_name)
        changes = dict(changes or {})
        names = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"unknown {type(config).__name__} field(s) {unknown}; valid: "
                             f"{', '.join(sorted(names))}")
        return self.replace(**{filter_name: dataclasses.replace(config, **changes)})


# EnSF on SQG: the SDE runs on per-variable standardised states (as the authors' SQG code);
# eps_beta = 0 (beta_t^2 = t) diverged in our runs, the filter's defaults did not. The
# likelihood of 1 K observations of standardised states is stiff: the implicit step keeps
# it stable, which makes the likelihood weight and RTPS real knobs, chosen by sweeps on
# 60-cycle runs (docs/tuning.md): weight 10 with RTPS 0.5 for linear observations,
# weight 1 with RTPS 0.3 for arctan (weight 3 diverged there).
_SQG_ENSF = EnSFConfig(n_steps=100, normalize=True, likelihood_step="implicit",
                       likelihood_weight=10.0, spread_relaxation=0.5)
_SQG_ENSF_ARCTAN = dataclasses.replace(_SQG_ENSF, likelihood_weight=1.0, spread_relaxation=0.3)
_SQG_COMMON = dict(model="sqg", model_settings={"preset": "bao2024_sqg64"}, steps_per_cycle=36,
                   cycle_seconds=12 * HOURS,
                   n_cycles=300, spinup_cycles=100, n_members=20, initial_spread=2.0,
                   ensf=_SQG_ENSF)

PRESETS: dict[str, DAPreset] = {
    "bao2024_sqg_linear": DAPreset(
        name="bao2024_sqg_linear", obs="identity", obs_error_std=1.0,
        letkf=LETKFConfig(localization_radius=1.1e6, inflation="rtps", inflation_factor=0.3),
        source="Bao, Zhang & Zhang (2024), SQG linear-observation case", **_SQG_COMMON),
    "bao2024_sqg_arctan": DAPreset(
        name="bao2024_sqg_arctan", obs="arctan", obs_error_std=0.01,
        letkf=LETKFConfig(localization_radius=1.4e6, inflation="rtps", inflation_factor=0.8),
        source="Bao, Zhang & Zhang (2024), SQG arctan-observation case",
        **{**_SQG_COMMON, "ensf": _SQG_ENSF_ARCTAN}),
    "yin2024_sqg_shocks": DAPreset(
        name="yin2024_sqg_shocks", obs="identity", obs_error_std=1.0, shocks=True,
        letkf=LETKFConfig(localization_radius=1.1e6, inflation="rtps", inflation_factor=0.3),
        reported={"ensf": 1.05, "letkf": 5.4, "free": 9.6},
        source="SC24 (Yin et al. 2024), Fig. 4: mean RMSE over 300 cycles", **_SQG_COMMON),
    "sakov2008": DAPreset(
        name="sakov2008", model="lorenz96", model_settings={"n": 40, "forcing": 8.0, "dt": 0.05},
        obs="identity", obs_error_std=1.0, steps_per_cycle=1, n_cycles=2000, spinup_cycles=500,
        n_members=7, initial_spread=1.0,
        letkf=LETKFConfig(localization_radius=4.0 * DAPPER_TO_HALF_WIDTH, inflation="multiplicative",
                          inflation_factor=1.04),
        reported={"letkf": 0.22}, source="DAPPER mods/Lorenz96/sakov2008.py"),
    "hoteit2015": DAPreset(
        name="hoteit2015", model="lorenz96", model_settings={"n": 40, "forcing": 8.0, "dt": 0.05},
        obs="identity", obs_error_std=1.0, steps_per_cycle=1, n_cycles=2000, spinup_cycles=500,
        n_members=10, initial_spread=1.0,
        letkf=LETKFConfig(localization_radius=6.0 * DAPPER_TO_HALF_WIDTH, inflation="multiplicative",
                          inflation_factor=1.04),
        reported={"letkf": 0.20}, source="DAPPER mods/Lorenz96/hoteit2015.py"),
}


def get_preset(name: str) -> DAPreset:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


@dataclass
class Experiment:
    """Everything :func:`turbda_kit.experiments.cycling.run_cycling` needs, built from a preset.

    Attributes
    ----------
    preset : DAPreset
    filter_name : str
    model, analysis, obs_operator, truth, initial_ensemble, config, shocks
        The engine's inputs (``analysis`` is None for a free run).
    attrs : dict
        Settings recorded in the output Dataset.
    """

    preset: DAPreset
    filter_name: str
    model: Any
    analysis: Any
    obs_operator: Any
    truth: Any
    initial_ensemble: Any
    config: Any
    shocks: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def run(self, out_dir=None, show_progress: bool | None = None, **kwargs):
        """Run the experiment; returns the engine's Dataset."""
        from .cycling import run_cycling

        return run_cycling(self.model, self.analysis, self.obs_operator, self.truth,
                           self.initial_ensemble, self.config, out_dir=out_dir,
                           name=f"{self.preset.name}:{self.filter_name}", shocks=self.shocks,
                           attrs=self.attrs, show_progress=show_progress, **kwargs)


FILTERS = ("ensf", "letkf", "free")


def build_experiment(preset: DAPreset | str, filter_name: str, *, truth_trajectory=None,
                     truth_stride: int = 1, seed: int = 0, device="cpu",
                     dtype=None, save_means: bool = False, checkpoint_every: int = 10,
                     divergence_rmse: float | None = None, spinup_days: float = 100.0,
                     model_overrides: dict[str, Any] | None = None) -> Experiment:
    """Assemble a cycling experiment from a preset.

    Parameters
    ----------
    preset : DAPreset or str
        A preset or its name; use ``preset.replace(n_cycles=..., n_members=...)`` for
        shorter or smaller runs.
    filter_name : {"ensf", "letkf", "free"}
    truth_trajectory : array-like, shape (n_times, *state_shape), optional
        Stored truth (SQG: a nature run's ``theta`` in K, one time per cycle unless
        ``truth_stride`` says otherwise). Default: a truth run on the fly by the model,
        started from a spun-up state.
    truth_stride : int
        Stored times per cycle in ``truth_trajectory``.
    seed : int
        Root seed (initial ensemble, observations, filter noise, shocks).
    device : torch.device or str
    dtype : torch.dtype, optional
        Default float32 for SQG, float64 for Lorenz-96.
    save_means : bool
        Store truth and ensemble means per cycle (for field plots).
    checkpoint_every : int
        Cycles between checkpoints when the run has an ``out_dir``.
    divergence_rmse : float, optional
        Stop above this RMSE (default: 10× the climatological scale, 100 K for SQG, 20
        for Lorenz-96).
    spinup_days : float
        SQG on-the-fly truth: model days of spin-up from the random initial state.
    model_overrides : dict, optional
        SQG parameter changes (``{"N": 32}`` selects ``bao2024_at_resolution(32)``, whose
        dt and hyperdiffusion scale with the grid) or Lorenz-96 settings.

    Returns
    -------
    Experiment
    """
    import math

    import torch

    from ..models.lorenz96 import Lorenz96
    from ..obs import operators
    from ..obs.noise import ShockProcess
    from .adapters import KelvinModel, ensf_filter, letkf_filter
    from .cycling import ArrayTruth, CyclingConfig, ModelTruth
    from .initial import ensemble_around_truth
    from .randomness import cycle_generator

    if isinstance(preset, str):
        preset = get_preset(preset)
    if filter_name not in FILTERS:
        raise InputError(f"unknown filter {filter_name!r}; choose from {', '.join(FILTERS)}")
    device = torch.device(device)
    positions, lengths = None, None
    if preset.model == "sqg":
        from ..filters.localization import sqg_positions
        from ..models.sqg import (
            SQGModel,
            bao2024_at_resolution,
            pv_to_theta,
            random_initial_state,
            sqg_preset,
        )

        dtype = dtype or torch.float32
        overrides = dict(model_overrides or {})
        if "N" in overrides:
            # Other grids keep the physics: dt and hyperdiffusion scale with the grid.
            sqg_params = bao2024_at_resolution(int(overrides.pop("N")))
        else:
            sqg_params = sqg_preset(preset.model_settings["preset"]).params
        if overrides:
            sqg_params = sqg_params.replace(**overrides)
        if preset.cycle_seconds:
            steps = preset.cycle_seconds / sqg_params.dt
            if abs(steps - round(steps)) > 1e-9:
                raise InputError(f"a {preset.cycle_seconds} s cycle is not a whole number of "
                                 f"dt = {sqg_params.dt} s steps")
            preset = preset.replace(steps_per_cycle=int(round(steps)))
        model = KelvinModel(SQGModel(sqg_params))
        positions = sqg_positions(sqg_params.N, sqg_params.L, sqg_params.H)
        lengths = (sqg_params.L, sqg_params.L)
        default_divergence = 100.0
    elif preset.model == "lorenz96":
        dtype = dtype or torch.float64
        settings = {**preset.model_settings, **(model_overrides or {})}
        model = Lorenz96(**settings)
        n = settings["n"]
        positions = torch.arange(n, dtype=torch.float64).reshape(n, 1)
        lengths = (float(n),)
        default_divergence = 20.0
    else:
        raise InputError(f"preset {preset.name} has unknown model {preset.model!r}")

    state_shape = tuple(model.state_shape)
    if truth_trajectory is not None:
        truth = ArrayTruth(truth_trajectory, stride=truth_stride, device=device, dtype=dtype)
        needed = preset.n_cycles
        if truth.n_cycles_available() < needed:
            raise InputError(f"the truth trajectory covers {truth.n_cycles_available()} cycles; "
                             f"preset {preset.name} runs {needed}: pass a longer nature run or "
                             f"preset.replace(n_cycles=...)")
        truth0 = truth.state(0)
        if tuple(truth0.shape) != state_shape:
            raise InputError(f"truth grid {tuple(truth0.shape)} does not match the model grid "
                             f"{state_shape}")
    else:
        gen = cycle_generator(seed, 0, "initial", "cpu")
        if preset.model == "sqg":
            pv0 = random_initial_state(sqg_params, gen, device=device, dtype=dtype)
            steps = int(round(spinup_days * 86400.0 / sqg_params.dt))
            x0 = model.model.advance(pv0, steps) if steps else pv0
            x0 = pv_to_theta(x0, sqg_params)
        else:
            x0 = settings.get("forcing", 8.0) + torch.randn(
                state_shape, generator=gen, dtype=dtype).to(device)
            x0 = model.advance(x0, 1000)
        truth = ModelTruth(model, x0, preset.steps_per_cycle)
        truth0 = x0
    initial = ensemble_around_truth(truth0, preset.n_members, preset.initial_spread,
                                    cycle_generator(seed, 0, "initial", device))

    if preset.obs == "identity":
        obs_operator = operators.Identity(state_shape)
    elif preset.obs == "arctan":
        obs_operator = operators.Arctan(state_shape)
    else:
        raise InputError(f"preset {preset.name} has unknown obs {preset.obs!r}")

    if filter_name == "ensf":
        analysis = ensf_filter(preset.ensf)
    elif filter_name == "letkf":
        analysis = letkf_filter(preset.letkf, positions, lengths)
    else:
        analysis = None
    config = CyclingConfig(n_cycles=preset.n_cycles, steps_per_cycle=preset.steps_per_cycle,
                           obs_error_std=preset.obs_error_std,
                           spinup_cycles=preset.spinup_cycles, seed=seed,
                           checkpoint_every=checkpoint_every,
                           divergence_rmse=divergence_rmse or default_divergence,
                           save_means=save_means)
    shocks = ShockProcess(torch.Generator(device=device)) if preset.shocks else None
    attrs = {"preset": preset.name, "filter": filter_name, "obs": preset.obs,
             "model_settings": repr(sqg_params.to_dict() if preset.model == "sqg" else settings),
             "model": preset.model, "source": preset.source,
             "letkf_settings": repr(preset.letkf) if filter_name == "letkf" else "",
             "ensf_settings": repr(preset.ensf) if filter_name == "ensf" else "",
             "reported_rmse": (preset.reported.get(filter_name, math.nan))}
    return Experiment(preset, filter_name, model, analysis, obs_operator, truth, initial, config,
                      shocks, attrs)

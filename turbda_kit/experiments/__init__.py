"""Thin drivers: cycling DA experiments, coupled ViT+EnSF runs, scaling studies.

Build an experiment from a named preset and run it::

    from turbda_kit.experiments import build_experiment, get_preset
    ds = build_experiment(get_preset("sakov2008"), "letkf", seed=1).run()
"""

from .builder import FREE_RUN, Experiment, build_experiment
from .comparison import Comparison, run_comparison
from .coupled import (
    COUPLED_EXPERIMENTS,
    COUPLED_RUNS,
    coupled_experiment,
    run_coupled,
    surrogate_drift_diagnostic,
)
from .cycling import (
    CHECKPOINT_NAME,
    DIVERGED_NAME,
    PER_CYCLE_VARIABLES,
    TIMING_VARIABLES,
    CyclingConfig,
    ObsNetwork,
    cycle_observations,
    run_cycling,
)
from .initial import ensemble_around_truth, ensemble_from_climatology
from .l96_ensf import L96EnSFResult, L96EnSFSettings, run_l96_ensf
from .members import MemberOutput
from .presets import PRESETS, VIT_ENSF_SETTINGS, DAPreset, get_preset
from .results import find_runs, find_scaling, find_training_runs, load_runs, open_members
from .setups import ModelSetup, available_models, model_setup, register_model
from .skill import SkillConfig
from .sweep import best_setting

# Not re-exported: ``sweep.sweep`` (the function would hide its module,
# ``turbda_kit.experiments.sweep``); import it from there.
from .truth import ArrayTruth, ModelTruth, TruthSource, truth_every

__all__ = [
    "CHECKPOINT_NAME",
    "COUPLED_EXPERIMENTS",
    "COUPLED_RUNS",
    "DIVERGED_NAME",
    "FREE_RUN",
    "PER_CYCLE_VARIABLES",
    "PRESETS",
    "TIMING_VARIABLES",
    "VIT_ENSF_SETTINGS",
    "ArrayTruth",
    "Comparison",
    "CyclingConfig",
    "DAPreset",
    "Experiment",
    "L96EnSFResult",
    "L96EnSFSettings",
    "MemberOutput",
    "ModelSetup",
    "ModelTruth",
    "SkillConfig",
    "ObsNetwork",
    "TruthSource",
    "available_models",
    "best_setting",
    "build_experiment",
    "coupled_experiment",
    "cycle_observations",
    "ensemble_around_truth",
    "ensemble_from_climatology",
    "find_runs",
    "find_scaling",
    "find_training_runs",
    "get_preset",
    "load_runs",
    "model_setup",
    "open_members",
    "register_model",
    "run_comparison",
    "run_coupled",
    "run_cycling",
    "run_l96_ensf",
    "surrogate_drift_diagnostic",
    "truth_every",
]

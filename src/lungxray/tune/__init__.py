"""``lungxray tune``: an Optuna search over config fields, scored on the validation split only."""

from lungxray.tune.search import tune
from lungxray.tune.space import ParamSpec, parse_space, sample, trial_config

__all__ = ["ParamSpec", "parse_space", "sample", "trial_config", "tune"]

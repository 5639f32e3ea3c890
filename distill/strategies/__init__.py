"""Distillation strategies: one module per multi-teacher method (see :mod:`distill.strategies.base`).

Registry: importing a module registers its strategy; a new method is a new file plus one import line
here. ``distill strategies`` lists them with their settings and paper references.
"""

from .base import (STRATEGIES, DistillStrategy, Needs, StrategySettings, StudentSignals, StudentSpec,
                   TeacherSignals, TeacherSpec, build_strategy, parse_value, register, resolve_settings,
                   settings_table)
from . import nokd, hinton, avg, mtbert, camkd, ebkd, aekd, rl, metadistil  # noqa: E402,F401  (registration)

__all__ = ["STRATEGIES", "DistillStrategy", "Needs", "StrategySettings", "StudentSignals", "StudentSpec",
           "TeacherSignals", "TeacherSpec", "build_strategy", "parse_value", "register", "resolve_settings",
           "settings_table"]

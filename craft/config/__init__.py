"""Experiments as TOML: loaded into frozen attrs records, checked strictly, written back.

An ``Experiment`` names its parts by registry entry: each of the sections
``model``, ``data``, ``task``, ``optim`` and ``schedule`` has a ``kind`` that
picks an entry of ``MODELS``, ``DATASETS``, ``TASKS``, ``OPTIMIZERS`` or
``SCHEDULES``; the section's other keys are that entry's config, and
``build(section, ...)`` makes the object (one protocol for every entry:
``craft.config.entries``).

Loading never guesses: unknown keys, missing keys, wrong types (``"false"`` is
not a bool, ``0.5`` not an int) and failed validators are all collected into
one ``ConfigError`` whose lines name the dotted path of each problem.
``dumps`` writes every resolved value, so ``loads(dumps(exp)) == exp``.

The package, by job: ``entries`` (registry entries -> configs), ``records``
(the attrs records), ``problems`` (error paths and messages), ``convert`` (the
strict cattrs converter), ``sections`` (the sections that pick an entry by
``kind``), ``io`` (load, overrides, dump). Import from ``craft.config``.
"""

from __future__ import annotations

from craft.config.entries import Config, FunctionConfig, build, build_problem, config_class, registries
from craft.config.io import (
    apply_overrides, dumps, from_dict, load, loads, parse_override, printable, save, structure, to_dict, tomllib,
)
from craft.config.problems import ConfigError
from craft.config.records import (
    SWEEPABLE, TRACKERS, Component, EarlyStopping, Experiment, Optim, OptimGroup, Sample, Sweep, Train,
)

__all__ = [
    "SWEEPABLE", "TRACKERS", "Component", "Config", "ConfigError", "EarlyStopping", "Experiment", "FunctionConfig",
    "Optim", "OptimGroup", "Sample", "Sweep", "Train", "apply_overrides", "build", "build_problem", "config_class", "dumps",
    "from_dict", "load", "loads", "parse_override", "printable", "registries", "save", "structure", "to_dict",
]

"""The conformance kit: Hypothesis checks of a loss plugin's contract and claimed properties.

Three ways in:

* ``lossplug check NAME [--profile quick|thorough] [--seed N]`` on the command line;
* ``test_conformance = conformance_tests("NAME")`` in a plugin's pytest suite
  (one test per check, ids are the check names);
* :func:`check_plugin` from Python, returning a :class:`Report`.

Every plugin gets the generic checks (finite values and gradients on typical
and extreme inputs, degenerate batches, float16/bfloat16/float32/float64
inputs, eager vs ``tf.function`` vs XLA, batch order, per-sample independence,
reduction with sample weights, gradients against finite differences, config
round-trip, save/load of a LossModel); each property a plugin claims in its
spec (:mod:`lossplug.properties`) adds one check. A failure reads like a bug
report: plugin, property, minimal falsifying example and how to reproduce it.

For a plugin's own tests, :func:`call_plugin` calls a plugin as the core does and
:func:`plugin_gradients` takes the gradients of its loss; :func:`value_and_gradients`
and :func:`compiled` (with :func:`compiler_modes`) take gradients and compile functions
on every Keras backend (see :mod:`lossplug.testing.autodiff`).

Importing this module registers the Hypothesis profiles ``lossplug-quick`` and
``lossplug-thorough`` (see :mod:`lossplug.testing.profiles`).
"""

from __future__ import annotations

from . import profiles, strategies
from .autodiff import compiled, compiler_modes, value_and_gradients
from .checks import Check, Context, checks_for
from .harness import Outcome, PluginHarness, call_plugin, plugin_gradients
from .profiles import PROFILE_ENV, QUICK, SEED_ENV, THOROUGH
from .report import CheckResult, KitFailure, Report
from .runner import check_plugin, run_one
from .suite import conformance_tests

__all__ = [
    "PROFILE_ENV",
    "QUICK",
    "SEED_ENV",
    "THOROUGH",
    "Check",
    "CheckResult",
    "Context",
    "KitFailure",
    "Outcome",
    "PluginHarness",
    "Report",
    "call_plugin",
    "check_plugin",
    "checks_for",
    "compiled",
    "compiler_modes",
    "conformance_tests",
    "plugin_gradients",
    "profiles",
    "run_one",
    "strategies",
    "value_and_gradients",
]

"""Hypothesis profiles of the conformance kit.

``lossplug-quick``
    for CI and the inner loop: few examples, ``derandomize=True`` (the same
    examples on every run), no deadline, no example database.
``lossplug-thorough``
    for release checks: many more examples from a random seed that every
    report prints (``lossplug check NAME --profile thorough --seed N`` replays it).

``LOSSPLUG_PROFILE=quick|thorough`` selects the default profile of
:func:`lossplug.testing.conformance_tests` and :func:`lossplug.testing.check_plugin`;
``LOSSPLUG_SEED=N`` fixes the seed of a pytest run of the one-liner.

Plugin authors may also load the profiles for their own Hypothesis tests:
``hypothesis.settings.load_profile("lossplug-quick")``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Verbosity, settings

QUICK = "lossplug-quick"
THOROUGH = "lossplug-thorough"
PROFILE_ENV = "LOSSPLUG_PROFILE"
SEED_ENV = "LOSSPLUG_SEED"

#: Seed used by the quick profile when none is given: a quick run is the same every time.
QUICK_SEED = 0

_SUPPRESSED = (
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.filter_too_much,
)


def register_profiles() -> None:
    """Register both profiles with Hypothesis (done when ``lossplug.testing`` is imported)."""
    common = dict(
        deadline=None,
        database=None,
        print_blob=False,
        report_multiple_bugs=False,
        suppress_health_check=_SUPPRESSED,
        verbosity=Verbosity.quiet,
    )
    settings.register_profile(QUICK, max_examples=10, derandomize=True, **common)
    settings.register_profile(THOROUGH, max_examples=100, derandomize=False, **common)


def profile_name(profile: str | None = None) -> str:
    """The full name of ``"quick"``, ``"thorough"``, a full name, or ``None`` (the env default)."""
    if profile is None:
        profile = os.environ.get(PROFILE_ENV, "").strip() or "quick"
    if isinstance(profile, str) and not profile.startswith("lossplug-"):
        profile = f"lossplug-{profile}"
    if profile not in (QUICK, THOROUGH):
        raise ValueError(
            f"unknown conformance-kit profile {profile!r}: use 'quick' or 'thorough' "
            f"(set {PROFILE_ENV}=quick|thorough or pass profile=...)"
        )
    return profile


def short_name(profile: str) -> str:
    return profile.removeprefix("lossplug-")


def profile_settings(profile: str | None = None) -> settings:
    return settings.get_profile(profile_name(profile))


def default_seed(profile: str | None = None, seed: int | None = None) -> int:
    """The seed a run uses: ``seed``, else ``LOSSPLUG_SEED``, else fixed (quick) or random."""
    if seed is not None:
        return int(seed)
    env = os.environ.get(SEED_ENV, "").strip()
    if env:
        return int(env)
    if profile_name(profile) == QUICK:
        return QUICK_SEED
    return int.from_bytes(os.urandom(4), "little")


register_profiles()

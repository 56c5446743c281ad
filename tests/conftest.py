"""Shared pytest configuration: hypothesis profiles and markers.

Profiles (select with HYPOTHESIS_PROFILE): ``dev`` (default, 20 examples), ``ci`` (derandomized,
30 examples: the CI suite is deterministic), ``stress`` (1500 examples, for local audits).
Every profile is registered before one is loaded.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=20, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("stress", max_examples=1500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

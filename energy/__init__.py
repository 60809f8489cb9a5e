"""energy stage: energy accounting (in progress; see README.md). Today its pure math:
:mod:`energy.counters` (cumulative counters) and :mod:`energy.integrate` (power samples)."""

"""The bundle's tests (a package, so that benchmarks/tests can share its fixtures and helpers)."""

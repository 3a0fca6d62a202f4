"""Shared test configuration: seeded Hypothesis, the database URLs and device markers."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Every property test is reproducible: derandomize makes Hypothesis draw from a fixed seed, and
# a failing example is printed with the test's name so it can be replayed.
settings.register_profile(
    "gpufair",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("GPUFAIR_HYPOTHESIS_PROFILE", "gpufair"))

POSTGRES_URL = os.environ.get(
    "GPUFAIR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def postgres_available(url: str = POSTGRES_URL) -> bool:
    """True when the test PostgreSQL server answers; tests marked postgres skip otherwise."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except Exception:  # noqa: BLE001 - any connection failure means "not available"
        return False
    finally:
        engine.dispose()


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_pg = any(item.get_closest_marker("postgres") for item in items)
    needs_gpu = any(item.get_closest_marker("gpu") for item in items)
    pg_ok = postgres_available() if needs_pg else True
    gpu_ok = cuda_available() if needs_gpu else True
    for item in items:
        if item.get_closest_marker("postgres") and not pg_ok:
            item.add_marker(pytest.mark.skip(reason=f"PostgreSQL not reachable at {POSTGRES_URL}"))
        if item.get_closest_marker("gpu") and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))

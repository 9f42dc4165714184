"""Test environment: the shared real data beside the repo, a throw-away lake, the `test` resources."""

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
_LAKE = Path(tempfile.mkdtemp(prefix="mmrec-test-lake-"))

os.environ.setdefault("MMREC_DATA", str(SHARED_DATA))
os.environ["MMREC_HOME"] = str(_LAKE)
os.environ["DAGSTER_HOME"] = str(_LAKE / "dagster")
os.environ["MMREC_ENV"] = "test"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def lake() -> Path:
    return _LAKE


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA

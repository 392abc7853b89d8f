# Shared fixtures of the Python tests: the golden fixtures folder and models loaded from it.
import os
import pathlib

import numpy as np
import pytest

import mambacv

HERE = pathlib.Path(__file__).resolve().parent


def fixtures_dir():
    """$MAMBACV_FIXTURES, else the build's MAMBACV_FIXTURES_DIR (set by CTest), else ../shared/fixtures beside the
    project."""
    for var in ("MAMBACV_FIXTURES", "MAMBACV_FIXTURES_DIR"):
        if os.environ.get(var):
            return pathlib.Path(os.environ[var])
    return HERE.parents[2] / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures():
    d = fixtures_dir()
    if not (d / "README.md").is_file():
        pytest.skip("golden fixtures not found at %s (set MAMBACV_FIXTURES, or configure with "
                    "-DMAMBACV_FIXTURES_DIR=...)" % d)
    return d


def rel_l2(a, ref):
    """||a - ref|| / ||ref|| in float64 (||a|| when ref is all zero), as the C++ tests compute it."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(a - ref) / den) if den > 0 else float(np.linalg.norm(a))


def golden(fixtures, name):
    return mambacv.load_weights(str(fixtures / (name + ".golden.safetensors")))


@pytest.fixture(scope="session")
def vim_mini(fixtures):
    return mambacv.Model.load(str(fixtures / "vim_mini.json")), golden(fixtures, "vim_mini")


@pytest.fixture(scope="session")
def vmamba_v2_mini(fixtures):
    return mambacv.Model.load(str(fixtures / "vmamba_v2_mini.json")), golden(fixtures, "vmamba_v2_mini")

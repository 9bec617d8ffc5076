"""Per-test isolation, as in Pyro's own test suite: an empty param store, fixed seeds (Pyro, torch, numpy,
random) and Pyro's argument validation on (restored after the test)."""
import pyro
import pytest


@pytest.fixture(autouse=True)
def pyro_test_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()

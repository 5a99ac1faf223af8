"""Shared fixture of the example-script tests: each test module names its script in ``SCRIPT``."""

import importlib.util

import pytest


@pytest.fixture(scope="module")
def script(request):
    """The example named by the test module's ``SCRIPT``, imported as a module (tests call its ``main(argv)``)."""
    path = request.module.SCRIPT
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

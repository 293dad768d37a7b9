import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def quadnet_app():
    """The C++ example app (examples/cpp), built against the installed quadnet package.

    scripts/test.sh builds it; QUADNET_APP overrides the path.
    """
    app = pathlib.Path(os.environ.get("QUADNET_APP", ROOT / "build" / "example" / "quadnet_app"))
    if not app.exists():
        pytest.fail(f"C++ example app not found at {app}: build it with scripts/test.sh "
                    "(or set QUADNET_APP)")
    return app


def pytest_collection_modifyitems(config, items):
    """Tests parametrised with device="cuda" (quadnet_testing.DEVICES) get the cuda marker."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") == "cuda":
            item.add_marker(pytest.mark.cuda)

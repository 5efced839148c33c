"""The API starts without the ML stack, and the worker loads it only in its forked children."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["app.main", "app.cli", "workers.celery_app", "workers.tasks"])
def test_importing_does_not_load_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules and 'models' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_app_never_imports_workers() -> None:
    code = "import sys, app.main, app.cli, app.queue; assert not any(m.startswith('workers') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

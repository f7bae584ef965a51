"""Apps import the client side without the worker's heavy dependencies."""

from __future__ import annotations

import subprocess
import sys


def test_client_side_imports_without_torch_faust_or_redis() -> None:
    code = (
        "import ripplerec.producers, ripplerec.consumers; import sys; "
        "assert 'torch' not in sys.modules and 'faust' not in sys.modules and 'redis' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

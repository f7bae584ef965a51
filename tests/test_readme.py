"""The README's Python runs: every ```python block, in order, against a ``ripplerec up`` subprocess.

As a reader would: ``python -m ripplerec up`` in one terminal, its ``export`` line in another, then the
blocks pasted into one Python session. A block that drifts from the API fails here. The stack serves
the hashed bag-of-words encoder (a README block does not depend on which), and takes any free web port
(``RIPPLEREC_WEB_PORT=0``), which ``up`` must print and export.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.integration


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_has_python_blocks_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(python_blocks(text)) >= 3
    first_bash = re.search(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert first_bash is not None
    commands = [line.split("#")[0].strip() for line in first_bash.group(1).splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"]


class _Lines:
    """A child's stdout, line by line, read in a thread (so waiting for a line can time out)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.seen[-60:]))


RUNNER = """
import sys, traceback
blocks = sys.stdin.read().split("\\n#-- next block --\\n")
namespace = {"__name__": "__main__"}
for n, block in enumerate(blocks, 1):
    try:
        exec(compile(block, f"README.md python block {n}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"README python block {n} failed")
    print(f"block {n} ok", flush=True)
"""


def test_readme_python_blocks_run_against_ripplerec_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLEREC_")}
    up_env = {**env, "RIPPLEREC_MODEL_NAME": "hashing", "RIPPLEREC_WEB_PORT": "0", "COLUMNS": "200"}
    up = subprocess.Popen([sys.executable, "-m", "ripplerec", "up", "--every", "1", "--loglevel", "warning"],
                          cwd=tmp_path, env=up_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = _Lines(up)
    try:
        printed = lines.wait_for(r"RIPPLEREC_WEB_PORT=0: http://127\.0\.0\.1:\d+/metrics", 120)
        export = lines.wait_for(r"^export RIPPLEREC_", 30)
        lines.wait_for(r"^ready in", 240)
        app_env = dict(item.split("=", 1) for item in shlex.split(export)[1:])
        assert {"RIPPLEREC_BOOTSTRAP_SERVERS", "RIPPLEREC_REDIS_URL", "RIPPLEREC_APP_ID"} <= set(app_env)
        port = app_env["RIPPLEREC_WEB_PORT"]
        assert port != "0" and f":{port}/metrics" in printed

        blocks = python_blocks(README.read_text())
        run = subprocess.run([sys.executable, "-c", RUNNER], input="\n#-- next block --\n".join(blocks),
                             cwd=tmp_path, env={**env, **app_env}, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
        assert f"block {len(blocks)} ok" in run.stdout

        lines.wait_for(r"events/s .*recommendations [1-9]", 60)  # the progress line saw the blocks' work
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=150) == 0  # a clean exit, however loaded the machine (60 s was passed under CI load)
        lines.wait_for(r"^stopping", 5)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=10)

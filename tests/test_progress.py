"""Progress bars: drawn on a terminal, off where stderr is a pipe (the flow's log, CI)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

SCRIPT = """
from aider_edge.progress import progress_bar, note
with progress_bar("decode") as update:
    for done in range(0, 101, 25):
        update(done, 100)
note("decoded 100 images")
"""


def run_with_stderr(stderr) -> None:
    subprocess.run([sys.executable, "-c", SCRIPT], stderr=stderr, check=True, timeout=60)


def test_a_terminal_gets_the_bar():
    master, slave = pty.openpty()
    # a fresh pseudo-terminal is 0 columns wide, where tqdm draws an empty bar
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        run_with_stderr(slave)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other side is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    text = out.decode()
    assert "decode: 100%|" in text and "decoded 100 images" in text


def test_a_pipe_gets_only_the_lines():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stderr == "decoded 100 images\n"

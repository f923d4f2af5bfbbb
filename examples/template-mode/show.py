"""The example's supervised child: prints the rendered file at start and on SIGHUP,
and stops cleanly on SIGTERM, like any daemon that reloads its configuration."""

import signal
import sys
import time
from pathlib import Path

path = Path(sys.argv[1])


def show(*_: object) -> None:
    print(f"--- {path} ---\n{path.read_text()}", end="", flush=True)


def stop(*_: object) -> None:
    print("show.py: stopping", flush=True)
    sys.exit(0)


signal.signal(signal.SIGHUP, show)
signal.signal(signal.SIGTERM, stop)
show()
while True:
    time.sleep(3600)

"""How long `pyro-bhpeft --help` and `pyro-bhpeft fit --help` take: each run in a fresh process, best of 5.

The command line parses before it imports torch, pyro, transformers or datasets, so help answers at once.

    python benchmarks/cli_startup.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

COMMANDS = (["--help"], ["fit", "--help"])
REPEATS = 5


def best_seconds(argv: list[str], repeats: int = REPEATS) -> float:
    """The fastest of ``repeats`` wall-clock times of ``pyro-bhpeft ARGV`` (``python -m pyro_bhpeft`` when the
    console script is not on the PATH)."""
    script = shutil.which("pyro-bhpeft")
    command = [script] if script else [sys.executable, "-m", "pyro_bhpeft"]
    return min(_time([*command, *argv]) for _ in range(repeats))


def main() -> None:
    python = min(_time([sys.executable, "-c", "pass"]) for _ in range(REPEATS))
    print(f"python -c pass: {python:.3f} s (the interpreter alone)")
    for argv in COMMANDS:
        print(f"pyro-bhpeft {' '.join(argv)}: {best_seconds(argv):.3f} s (best of {REPEATS})")


def _time(cmd: list[str]) -> float:
    tick = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - tick


if __name__ == "__main__":
    main()

"""What installing pytest-vitattn costs a pytest run that doesn't use it; prints Markdown.

Usage::

    python benchmarks/bench_plugin_import.py [--repeats 21]

Three measures, each in fresh interpreters, repeats interleaved, medians reported:

* ``python -c "import pytest; import pytest_vitattn.plugin"`` against
  ``python -c "import pytest"``: the wall-clock cost of importing the plugin (pytest itself
  is loaded in any pytest run, so it is the baseline).
* ``pytest --help`` with the plugin against ``pytest -p no:vitattn --help`` (the plugin
  blocked): what a pytest start-up pays for the installed plugin, options included.
* ``-X importtime``: the import work of the plugin's modules alone (no interpreter start-up,
  less noise), the sum of the top-level imports after pytest's.

Target: at most 0.1 s. The plugin must not import torch or timm (``tests/test_import_cost.py``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "import pytest": [sys.executable, "-c", "import pytest"],
    "import pytest + plugin": [
        sys.executable,
        "-c",
        "import pytest; import pytest_vitattn.plugin",
    ],
    "pytest --help, plugin blocked": [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:vitattn",
        "-p",
        "no:cacheprovider",
        "--help",
    ],
    "pytest --help": [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--help"],
}


def wall_time(command: list[str], cwd: str) -> float:
    began = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - began


def import_work(cwd: str) -> float:
    """Seconds of import work for the plugin's modules, from ``-X importtime``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pytest; import pytest_vitattn.plugin"],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    rows = [line.split("|") for line in out.stderr.splitlines() if line.startswith("import time:")]
    top = [
        (name[1:], int(cumulative))
        for _, cumulative, name in rows
        if cumulative.strip().isdigit() and not name[1:].startswith(" ")
    ]
    names = [name for name, _ in top]
    return sum(us for _, us in top[names.index("pytest") + 1 :]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:  # no conftest or ini file around
        for command in CASES.values():  # warm the file cache
            wall_time(command, cwd)
        times: dict[str, list[float]] = {name: [] for name in CASES}
        work: list[float] = []
        for _ in range(args.repeats):
            for name, command in CASES.items():
                times[name].append(wall_time(command, cwd))
            work.append(import_work(cwd))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"Python {sys.version.split()[0]}; median of {args.repeats} interleaved runs\n")
    print("| measure | median s | plugin's cost s |")
    print("|---|---|---|")
    print(f"| `import pytest` | {median['import pytest']:.3f} | baseline |")
    plugin_import = median["import pytest + plugin"] - median["import pytest"]
    print(
        f"| `import pytest; import pytest_vitattn.plugin` | "
        f"{median['import pytest + plugin']:.3f} | {plugin_import:+.3f} |"
    )
    print(
        f"| `pytest -p no:vitattn --help` | {median['pytest --help, plugin blocked']:.3f} "
        f"| baseline |"
    )
    help_cost = median["pytest --help"] - median["pytest --help, plugin blocked"]
    print(f"| `pytest --help` | {median['pytest --help']:.3f} | {help_cost:+.3f} |")
    print(
        f"| `-X importtime`, plugin modules only | {statistics.median(work):.3f} | "
        f"{statistics.median(work):+.3f} |"
    )


if __name__ == "__main__":
    main()

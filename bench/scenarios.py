"""The benchmark scenarios: found by their ``SCENARIO = "..."`` line, loaded, given their parser.

Scenarios are modules ``bench/<module>.py`` following the interface in ``bench/harness.py``
(``SCENARIO``, ``add_arguments``, ``run``, ``summary_rows``). They are found by reading the
``SCENARIO = "..."`` line of each module (no import), so a new scenario needs no registration
and one broken scenario does not break the others. Used by ``bench/cli.py`` (running them) and
``bench/report.py`` (formatting their results).
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent
_SCENARIO_RE = re.compile(r"""^SCENARIO\s*(?::\s*str\s*)?=\s*["']([A-Za-z0-9_.-]+)["']""", re.M)
# Modules of bench/ that are plumbing, never scenarios.
NOT_SCENARIOS = ("cli", "harness", "common", "report", "scenarios")
# Run order of --all: the figures the README leads with first; others after, by name.
PREFERRED_ORDER = ["cold-vs-warm", "midnight-burst", "burst-sim", "scale", "kubelet-baseline", "kubelet-api"]


def discover(bench_dir: Path = BENCH_DIR) -> dict[str, str]:
    """Scenario name → module name, from the ``SCENARIO = "..."`` line of each bench module."""
    found: dict[str, str] = {}
    for path in sorted(bench_dir.glob("*.py")):
        if path.stem.startswith("_") or path.stem in NOT_SCENARIOS:
            continue
        m = _SCENARIO_RE.search(path.read_text(errors="replace"))
        if m:
            found[m.group(1)] = f"bench.{path.stem}"
    return found


def ordered(names: list[str]) -> list[str]:
    """``names`` in the --all run order."""
    rank = {n: i for i, n in enumerate(PREFERRED_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def load(module: str) -> ModuleType:
    mod = importlib.import_module(module)
    for attr in ("SCENARIO", "add_arguments", "run", "summary_rows"):
        if not hasattr(mod, attr):
            raise TypeError(f"{module} lacks {attr} (see bench/harness.py for the scenario interface)")
    return mod


def scenario_parser(mod: ModuleType) -> argparse.ArgumentParser:
    from bench.harness import add_common_arguments

    # "resolve": a scenario that also declares --kubeconfig (for its own __main__) keeps working.
    p = argparse.ArgumentParser(
        prog=f"warmlet bench {mod.SCENARIO}", description=mod.__doc__, conflict_handler="resolve"
    )
    add_common_arguments(p)
    mod.add_arguments(p)
    return p

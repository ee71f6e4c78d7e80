"""``warmlet bench <scenario>... | --all [--quick] | --report``: run benchmark scenarios, print their figures.

Scenarios are the modules of ``bench/`` with a ``SCENARIO = "..."`` line (``bench/scenarios.py``;
interface in ``bench/harness.py``); scenario options are passed through to the scenario's parser.
``--all`` runs every scenario and then regenerates ``bench/RESULTS.md``; ``--report`` only
regenerates the documents (``bench/RESULTS.md`` from ``bench/results/``, and
``docs/reliability.md`` from the faults tier's results: ``bench/report.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from bench.common import RESULTS_DIR
from bench.scenarios import discover, load, ordered, scenario_parser

log = logging.getLogger("bench.cli")


def module_main(module: str) -> None:
    """``python -m bench.<module> [--quick] [options]``: one scenario, its table printed."""
    from rich.console import Console

    mod = load(module)
    parser = scenario_parser(mod)
    parser.prog = f"python -m {module}"
    parser.add_argument("--quick", action="store_true", help="the small version (< 2 min)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("provider", "sandbox"):
        logging.getLogger(name).setLevel(logging.WARNING)
    result = asyncio.run(mod.run(args, args.quick))
    Console().print(render_table(mod.SCENARIO, mod.summary_rows(result)))


def bench_parser() -> argparse.ArgumentParser:
    """``warmlet bench``'s own options (anything else is passed through to the scenarios)."""
    p = argparse.ArgumentParser(
        prog="warmlet bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument("scenarios", nargs="*", help="scenario names (see --list)")
    p.add_argument("--all", action="store_true", help="run every scenario and regenerate bench/RESULTS.md")
    p.add_argument("--quick", action="store_true", help="small versions (< 2 min each)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument(
        "--report",
        action="store_true",
        help="only regenerate bench/RESULTS.md (from bench/results/) and docs/reliability.md "
        "(from the faults tier's results)",
    )
    p.add_argument("-h", "--help", action="store_true", help="this help, or a scenario's with its name")
    return p


def render_table(scenario: str, rows: list[tuple[str, str]], title_note: str = "") -> Any:
    """A rich table of a scenario's summary rows."""
    from rich.table import Table

    table = Table(title=f"{scenario}{' - ' + title_note if title_note else ''}", title_justify="left")
    table.add_column("metric", style="cyan", no_wrap=True)
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    return table


def _record_command(scenario: str, command: str, since: float) -> None:
    """Stamp the reproducing command into the scenario's result JSON if this run wrote it (at or
    after ``since``, wall clock): a run told to write elsewhere leaves the published one alone."""
    path = RESULTS_DIR / f"{scenario}.json"
    try:
        if path.stat().st_mtime < since:
            return
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if data.get("command") != command:
        data["command"] = command
        path.write_text(json.dumps(data, indent=2) + "\n")


async def run_scenarios(
    names: list[str], modules: dict[str, str], quick: bool, extra: list[str], console: Any
) -> dict[str, str]:
    """Run scenarios one after the other; returns scenario → "ok" or the error."""
    from bench.harness import command_line

    outcome: dict[str, str] = {}
    for name in names:
        try:
            mod = load(modules[name])
            args, unknown = scenario_parser(mod).parse_known_args(extra)
            if unknown and len(names) == 1:
                raise SystemExit(f"warmlet bench {name}: unknown options {unknown}")
            console.rule(f"[bold]{name}[/] {'(quick)' if quick else ''}")
            t0, wall0 = time.monotonic(), time.time()
            result = await mod.run(args, quick)
            _record_command(name, command_line(name, quick, [a for a in extra if a not in unknown]), wall0)
            console.print(render_table(name, mod.summary_rows(result), f"{time.monotonic() - t0:.0f} s"))
            outcome[name] = "ok"
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise
        except SystemExit:
            raise
        except Exception as e:
            log.exception("scenario failed scenario=%s", name)
            console.print(f"[red]{name} failed:[/] {e!r}")
            outcome[name] = f"failed: {e!r}"
    return outcome


def main(argv: list[str]) -> int:
    """Entry point of ``warmlet bench`` (the arguments after ``bench``)."""
    from rich.console import Console

    ns, extra = bench_parser().parse_known_args(argv)
    console = Console()
    modules = discover()
    if ns.list:
        for name in ordered(list(modules)):
            console.print(f"{name:18} {modules[name]}")
        return 0
    if ns.help:
        if ns.scenarios and ns.scenarios[0] in modules:
            scenario_parser(load(modules[ns.scenarios[0]])).print_help()
        else:
            bench_parser().print_help()
            print("\nscenarios:", ", ".join(ordered(list(modules))))
        return 0
    if ns.report:
        from bench.report import write_reports

        for line in write_reports():
            console.print(line)
        return 0
    names = ordered(list(modules)) if ns.all else list(ns.scenarios)
    unknown = [n for n in names if n not in modules]
    if unknown or not names:
        console.print(f"[red]unknown or no scenario {unknown}[/]; known: {', '.join(ordered(list(modules)))}")
        return 2
    if not logging.getLogger().handlers:  # progress of long scenarios; the node's own logs stay quiet
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        for name in ("provider", "sandbox"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        outcome = asyncio.run(run_scenarios(names, modules, ns.quick, extra, console))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    if ns.all:
        from bench.report import write_report

        console.print(f"wrote {write_report()}")
    failed = {k: v for k, v in outcome.items() if v != "ok"}
    for k, v in failed.items():
        console.print(f"[red]{k}[/]: {v}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

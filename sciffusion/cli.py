"""The ``sciffusion`` command: ``sciffusion tour`` plus one sub-command group per installed domain.

Domains plug in through the ``sciffusion.domains`` entry-point group (see pyproject.toml); an
entry point names a module with ``tour(out_dir, quick) -> dict`` and optionally
``register_cli(subparsers)``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path


def _plugins() -> dict:
    found = {}
    for ep in sorted(entry_points(group="sciffusion.domains"), key=lambda e: e.name):
        try:
            found[ep.name] = ep.load()
        except ImportError as err:  # a domain whose extra is not installed
            logging.getLogger(__name__).warning("domain %s unavailable: %s", ep.name, err)
    return found


def _print_table(section: dict) -> None:
    rows = section.get("rows") or []
    print(f"\n== {section.get('section')} ({section.get('seconds', '?')} s)")
    for k, v in section.items():
        if k not in ("rows", "section", "seconds", "figures"):
            print(f"  {k}: {v}")
    if rows:
        keys = list(rows[0])
        widths = [max(len(str(k)), *(len(str(r.get(k, ""))) for r in rows)) for k in keys]
        print("  " + "  ".join(str(k).ljust(w) for k, w in zip(keys, widths)))
        for r in rows:
            print("  " + "  ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)))


def tour(out: Path, quick: bool, only: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Run every available domain end to end at small size; write PNGs and summary.json to ``out``."""
    from .tour import core_tour, write_summary

    out.mkdir(parents=True, exist_ok=True)
    sections = []
    plugins = _plugins()
    names = ["core"] + [n for n in plugins if hasattr(plugins[n], "tour")]
    for name in names:
        if only and name not in only:
            continue
        sub = out if name == "core" else out / name
        sub.mkdir(parents=True, exist_ok=True)
        section = core_tour(sub, quick, progress) if name == "core" else plugins[name].tour(sub, quick)
        section.setdefault("section", name)
        sections.append(section)
        _print_table(section)
        write_summary(out, sections)
    print(f"\nsummary: {out / 'summary.json'}")
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciffusion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_tour = sub.add_parser("tour", help="run every domain end to end at small size")
    p_tour.add_argument("--out", type=Path, default=Path("tour-output"), help="folder for figures and JSON")
    p_tour.add_argument("--quick", action="store_true", help="smaller sizes (CI)")
    p_tour.add_argument("--only", nargs="*", help="sections to run (core and domain names)")
    p_tour.add_argument("--no-progress", action="store_true")
    for name, mod in _plugins().items():
        if hasattr(mod, "register_cli"):
            mod.register_cli(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "tour":
        tour(args.out, args.quick, args.only, not args.no_progress)
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

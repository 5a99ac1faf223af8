"""The ``sciffusion`` command: ``sciffusion tour`` plus one sub-command group per installed domain.

Domains plug in through the ``sciffusion.domains`` entry-point group (see pyproject.toml); an
entry point names a module with ``tour(out_dir, quick) -> dict`` and optionally
``register_cli(subparsers)``.

Plugins load lazily: ``sciffusion --help`` imports no domain (nor torch); a domain's module is
imported only when its command runs (or, for a domain whose command name is not listed in
:data:`COMMANDS`, when a command no listed domain owns is asked for). Every error a command raises
is printed as one line, ``sciffusion: error: ...``, with exit status 2 (the traceback with
``--debug``), and an ``--out`` path that did not exist before a failed run is removed again.
Domain CLIs may use the argument types below (:func:`positive_int`, ...) so that bad values are
refused before any work.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

# command name -> (entry-point name, one-line help): listed without importing the domain
COMMANDS = {
    "discrete": ("discrete", "masked / uniform discrete diffusion over token sequences"),
    "fkc": ("feynman_kac", "Feynman-Kac correctors: annealing, products, guidance (exact demo)"),
    "bridges": ("schrodinger_bridge", "Schrödinger bridges with iterative reference refinement"),
    "molecules": ("boltzmann", "Boltzmann sampling of molecules and free energies"),
    "sequences": ("sequence_design", "DNA/RNA design with soft value-based decoding (SVDD)"),
    "graphs": ("graph_sde", "graph and molecule generation with GDSS (joint SDEs over X and A)"),
}
_ALIASES = {cmd: ep for cmd, (ep, _) in COMMANDS.items()}


class CLIError(ValueError):
    """A user error found by a command (bad argument, unreadable input): printed as one line."""


class _Formatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option's help whose default is a value (not None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, argparse.SUPPRESS) \
                and action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """ArgumentParser that shows defaults in help and reports errors as one line, exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f" (see: sciffusion {sub + ' ' if sub else ''}--help)"
        self.exit(2, f"sciffusion: error: {message}{where}\n")


# --- argument types shared by the domain CLIs ---------------------------------------------------
def _number(kind, text, flag_check, what):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if not flag_check(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return v


def positive_int(text: str) -> int:
    """``type=`` for an integer >= 1."""
    return _number(int, text, lambda v: v >= 1, "an integer >= 1")


def nonnegative_int(text: str) -> int:
    """``type=`` for an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """``type=`` for a finite number > 0."""
    return _number(float, text, lambda v: v > 0, "a number > 0")


def nonnegative_float(text: str) -> float:
    """``type=`` for a finite number >= 0."""
    return _number(float, text, lambda v: v >= 0, "a number >= 0")


def finite_float(text: str) -> float:
    """``type=`` for any finite number."""
    return _number(float, text, lambda v: True, "a number")


def unit_interval(text: str) -> float:
    """``type=`` for a number in (0, 1]."""
    return _number(float, text, lambda v: 0 < v <= 1, "a number in (0, 1]")


# --- plugins --------------------------------------------------------------------------------------
def _entry_points() -> dict:
    return {ep.name: ep for ep in sorted(entry_points(group="sciffusion.domains"), key=lambda e: e.name)}


def _load(ep):
    try:
        return ep.load()
    except ImportError as err:  # a domain whose extra is not installed
        raise CLIError(f"the {ep.name} domain cannot be loaded: {err}") from err


def _plugins() -> dict:
    """Every installed domain's plugin module (imports them all: for ``tour``)."""
    found = {}
    for name, ep in _entry_points().items():
        try:
            found[name] = ep.load()
        except ImportError as err:
            logging.getLogger(__name__).warning("domain %s unavailable: %s", name, err)
    return found


def section_names(eps=None) -> dict:
    """Accepted ``tour --only`` names -> section (entry-point name); command names are aliases."""
    eps = _entry_points() if eps is None else eps
    names = {"core": "core", **{n: n for n in eps}}
    names.update({cmd: ep for cmd, ep in _ALIASES.items() if ep in eps})
    return names


def _print_table(section: dict) -> None:
    rows = section.get("rows") or []
    print(f"\n== {section.get('section')} ({section.get('seconds', '?')} s)")
    for k, v in section.items():
        if k not in ("rows", "section", "seconds", "figures", "folder"):
            print(f"  {k}: {v}")
    if rows:
        keys = list(rows[0])
        widths = [max(len(str(k)), *(len(str(r.get(k, ""))) for r in rows)) for k in keys]
        print("  " + "  ".join(str(k).ljust(w) for k, w in zip(keys, widths)))
        for r in rows:
            print("  " + "  ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)))


def tour(out: Path, quick: bool, only: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Run every available domain end to end at small size; write PNGs and summary.json to ``out``.

    Args:
        only: sections to run: ``core``, domain names (``feynman_kac``) or their command names
            (``fkc``, ``bridges``, ``discrete``); an unknown name raises :class:`CLIError`.
    """
    eps = _entry_points()
    valid = section_names(eps)
    wanted = None
    if only:
        bad = [n for n in only if n not in valid]
        if bad:
            raise CLIError(f"tour --only: unknown section(s) {', '.join(bad)}; "
                           f"choose from {', '.join(sorted(valid))}")
        wanted = {valid[n] for n in only}
    from .tour import core_tour, write_summary

    out.mkdir(parents=True, exist_ok=True)
    sections = []
    names = ["core"] + [n for n in eps if wanted is None or n in wanted]
    for name in names:
        if wanted is not None and name not in wanted:
            continue
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if name == "core":
            section = core_tour(out, quick, progress)
            section.setdefault("folder", ".")
        else:
            mod = _load(eps[name])
            if not hasattr(mod, "tour"):
                continue
            sub = out / name
            sub.mkdir(parents=True, exist_ok=True)
            section = mod.tour(sub, quick)
            section.setdefault("folder", name)
        section.setdefault("section", name)
        # wall-clock and CPU time of the whole section (CPU: every thread of this process)
        section["seconds"] = round(time.perf_counter() - wall0, 1)
        section["cpu_seconds"] = round(time.process_time() - cpu0, 1)
        sections.append(section)
        _print_table(section)
        write_summary(out, sections)
    wall, cpu = sum(s["seconds"] for s in sections), sum(s["cpu_seconds"] for s in sections)
    print(f"\n{len(sections)} sections in {wall:.0f} s wall-clock ({cpu:.0f} s CPU)")
    print(f"summary: {out / 'summary.json'}")
    return sections


def _cmd_tour(args) -> int:
    tour(args.out, args.quick, args.only, not args.no_progress)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the real sub-commands of the domain that owns ``command`` (only that one is
    imported) and one-line placeholders for the others."""
    from . import __version__

    parser = Parser(prog="sciffusion",
                    description="Scientific and discrete diffusion: 'sciffusion tour' runs every installed "
                                "domain end to end; each domain adds a command group ('sciffusion COMMAND --help').")
    parser.add_argument("--version", action="version", version=f"sciffusion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's own, all cores or $OMP_NUM_THREADS). "
                             "On a shared, busy machine use 1: two threads there oversubscribe the cores "
                             "(the tour's core section took over 270 s on two threads against 17 s on one, "
                             "with one other process running); on an idle 2-core machine two threads were "
                             "faster (README)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    p_tour = sub.add_parser("tour", help="run every domain end to end at small size")
    p_tour.add_argument("--out", type=Path, default=Path("tour-output"), help="folder for figures and JSON")
    p_tour.add_argument("--quick", action="store_true", help="smaller sizes (CI)")
    p_tour.add_argument("--only", nargs="+", metavar="SECTION",
                        help="sections to run: core, a domain name or a command name "
                             f"({', '.join(sorted(section_names()))})")
    p_tour.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_tour.set_defaults(func=_cmd_tour)
    eps = _entry_points()
    listed = {ep for ep, _ in COMMANDS.values()}
    if command in COMMANDS and COMMANDS[command][0] in eps:
        load = [COMMANDS[command][0]]
    elif command is None or command == "tour" or command.startswith("-"):
        load = []
    else:  # a command no listed domain owns: ask the other domains
        load = [n for n in eps if n not in listed]
    registered = set()
    for name in load:
        mod = _load(eps[name])
        if hasattr(mod, "register_cli"):
            before = set(sub.choices)
            mod.register_cli(sub)
            registered |= set(sub.choices) - before
    for cmd, (ep, help_) in COMMANDS.items():
        if ep in eps and cmd not in registered and cmd not in sub.choices:
            sub.add_parser(cmd, help=help_, add_help=False)
    for name in eps:
        if name not in listed and name not in load and name not in sub.choices:
            sub.add_parser(name, help=f"the {name} domain (its commands load on use)", add_help=False)
    return parser


def _first_command(argv: list[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a
        if a in ("-h", "--help", "--version"):
            return None
    return None


def _out_paths(args) -> list[Path]:
    outs = []
    for key in ("out",):
        v = getattr(args, key, None)
        if v is not None:
            outs.append(Path(v))
    return outs


def _set_threads(threads: int | None) -> None:
    """torch's intra-op threads for this command: ``--threads`` if given, else torch's own default."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    try:
        parser = build_parser(_first_command(argv))
    except CLIError as err:
        if debug:
            raise
        print(f"sciffusion: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):  # a placeholder whose domain registered no such command
        parser.error(f"the command {args.command!r} is not available (its domain registered no such command)")
    # our own progress notes at INFO; other libraries' (numexpr's thread count, ...) only from WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sciffusion").setLevel(logging.INFO)
    _set_threads(args.threads)
    fresh = [p for p in _out_paths(args) if not p.exists()]
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _remove(fresh)
        print("sciffusion: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error reaches the user as one line
        _remove(fresh)
        if debug:
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, (CLIError, ValueError, TypeError, FileNotFoundError)):
            print(f"sciffusion: error: {text}", file=sys.stderr)
        else:  # not a recognised input error: say what it was and where to see more
            print(f"sciffusion: error: {type(err).__name__}: {text} (--debug for the traceback)", file=sys.stderr)
        return 2


def _remove(paths) -> None:
    """Remove outputs a failed run created (only paths that did not exist before it)."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
        tmp = p.with_name(p.name + ".tmp")
        if tmp.exists():
            tmp.unlink()


if __name__ == "__main__":
    sys.exit(main())

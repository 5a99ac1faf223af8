"""Every source file compiles without warnings, and no docstring holds a control character.

A non-raw docstring with LaTeX silently changes meaning: ``"\\tilde"`` is a tab followed by
"ilde", ``"\\alpha"`` starts with a bell (``help()`` shows ``\\x07lpha``), ``"\\frac"`` with a form
feed, ``"\\varepsilon"`` with a vertical tab, and ``"\\mathbb"`` is an invalid escape (a
SyntaxWarning at compile time, an error in a future Python). Docstrings with backslashes are
raw strings (``r\"\"\"...\"\"\"``); these tests find any that is not, file and line.

The suite also turns warnings raised from our own modules into errors (pyproject's
``filterwarnings = [..., "error:::sciffusion"]``); the last test checks that the filter is live.
"""

import ast
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("sciffusion", "domains", "tests", "benchmarks", "examples")
                 for p in (ROOT / d).rglob("*.py"))


def _rel(p):
    return p.relative_to(ROOT).as_posix()


def test_sources_are_found():
    assert any(_rel(p) == "sciffusion/samplers.py" for p in SOURCES)
    assert any(_rel(p).startswith("domains/") for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_compiles_without_warnings(path):
    """compile() records every warning: invalid escape sequences (SyntaxWarning) must not occur."""
    src = path.read_text(encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = compile(src, str(path), "exec", dont_inherit=True)
    assert code.co_filename == str(path)
    found = [f"{_rel(path)}:{w.lineno}: {w.message}" for w in caught]
    assert not found, "; ".join(found) + ' (make the docstring a raw string r"""...""")'


def _docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                yield node.body[0].lineno, doc


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_docstrings_hold_no_control_characters(path):
    """A tab, bell, backspace, form feed, vertical tab or carriage return in a docstring is an
    escape that was meant as LaTeX (\\tilde, \\alpha, \\beta, \\frac, \\varepsilon, \\rho)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for lineno, doc in _docstrings(tree):
        bad = sorted({repr(c) for c in doc if ord(c) < 32 and c != "\n"})
        assert not bad, f"{_rel(path)}:{lineno}: docstring holds {', '.join(bad)}; make it a raw string"


def test_warnings_from_our_modules_are_errors():
    """The pyproject filter is active: a warning attributed to a sciffusion module raises, one
    attributed to another module does not."""
    with pytest.raises(UserWarning, match="ours"):
        warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="sciffusion.domains.fake")
    with warnings.catch_warnings(record=True) as seen:  # the suite's filters, recorded
        warnings.warn_explicit("theirs", UserWarning, "x.py", 1, module="numpy.fake")
    assert [str(w.message) for w in seen] == ["theirs"]

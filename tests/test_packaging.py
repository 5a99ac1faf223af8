"""The built wheel maps the folder ``domains/`` to ``sciffusion.domains`` and carries every domain.

With a non-editable install, running Python from the repository root lets the source folder
``sciffusion/`` shadow the installed package (docs/ARCHITECTURE.md); so the wheel is built, unpacked into a
scratch directory, and imported from a different working directory, with the repository off the path.
"""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _domain_packages():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [p for p in cfg["tool"]["setuptools"]["packages"] if p.startswith("sciffusion.domains.")]


def test_every_domain_folder_is_packaged():
    listed = {p.rsplit(".", 1)[1] for p in _domain_packages()}
    on_disk = {d.name for d in (ROOT / "domains").iterdir() if (d / "__init__.py").exists()}
    assert on_disk == listed, f"domains/ folders {sorted(on_disk)} vs pyproject packages {sorted(listed)}"


def test_wheel_imports_every_domain_from_elsewhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("sciffusion-*.whl")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(target)
    assert "sciffusion/domains/__init__.py" in names and not any(n.startswith("domains/") for n in names)
    mods = ["sciffusion"] + _domain_packages()
    code = ("import importlib, sys; sys.path = [p for p in sys.path if p not in ('', %r)];"
            "mods = %r; files = [importlib.import_module(m).__file__ for m in mods];"
            "assert all(f.startswith(%r) for f in files), files; print(len(files))"
            % (str(ROOT), mods, str(target)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(len(mods))

"""The ``fkc`` command group and the tour section: numbers against the exact targets."""

import argparse
import json

from sciffusion.domains.feynman_kac import cli


def test_tour_quick_reports_fkc_closer_to_exact_than_uncorrected(tmp_path):
    section = cli.tour(tmp_path, quick=True)
    assert section["section"] == "feynman_kac"
    for name in section["figures"]:
        assert (tmp_path / name).stat().st_size > 1000
    by = {(r["target"], r["sampler"]): r for r in section["rows"]}
    for kind in ("anneal", "product", "cfg"):
        exact = by[(kind, "exact (quadrature)")]["mean"]
        fkc, unc = by[(kind, "FKC")]["mean"], by[(kind, "uncorrected")]["mean"]
        # quick size (2048 particles, 100 steps): FKC's mean error is ~0.05 at most, the
        # uncorrected sampler's 0.2 (cfg) to 1.1 (anneal)
        assert abs(fkc - exact) < 0.1 and abs(fkc - exact) < abs(unc - exact)


def test_cli_anneal_writes_json_and_figure(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.register_cli(sub)
    args = parser.parse_args(["fkc", "anneal", "--beta", "3", "--particles", "1024", "--steps", "60",
                              "--out", str(tmp_path)])
    assert args.func(args) == 0
    rows = json.loads((tmp_path / "fkc_anneal.json").read_text())
    assert [r["sampler"] for r in rows] == ["exact (quadrature)", "FKC", "uncorrected"]
    assert abs(rows[0]["left_mass"] - 0.9174) < 1e-3
    assert (tmp_path / "fkc_anneal_diagnostics.png").exists()
    assert "left_mass" in capsys.readouterr().out

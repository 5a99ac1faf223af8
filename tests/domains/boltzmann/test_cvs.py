import math

import numpy as np
import pytest
import torch

from sciffusion.domains.boltzmann.cvs import (
    CV, Coordination, CVSet, Dihedral, Distance, phi_psi_alanine)


def test_dihedral_closed_form_sign():
    # i=(1,0,0), j=(0,0,0), k=(0,0,1), l=(cos t, sin t, 1): dihedral = t (IUPAC sign)
    ts = torch.tensor([0.3, -2.0, 3.0, math.pi, -math.pi + 1e-9], dtype=torch.float64)
    x = torch.zeros(len(ts), 4, 3, dtype=torch.float64)
    x[:, 0] = torch.tensor([1.0, 0, 0])
    x[:, 2] = torch.tensor([0.0, 0, 1])
    x[:, 3, 0], x[:, 3, 1], x[:, 3, 2] = torch.cos(ts), torch.sin(ts), 1.0
    phi = Dihedral(0, 1, 2, 3)(x)
    exp = torch.atan2(torch.sin(ts), torch.cos(ts))  # the same angle on (-pi, pi]
    torch.testing.assert_close(phi, exp, atol=1e-12, rtol=0)
    assert (phi > -math.pi).all() and (phi <= math.pi).all()


def test_distance_coordination_and_gradients():
    x = torch.tensor([[[0, 0, 0], [0.3, 0.4, 0], [2.0, 0, 0]]], dtype=torch.float64, requires_grad=True)
    d = Distance(0, 1)(x)
    assert d.item() == pytest.approx(0.5, abs=1e-15)
    (g,) = torch.autograd.grad(d.sum(), x)
    torch.testing.assert_close(g[0, 1], torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64))
    c = Coordination([0], [1, 2], r0=0.5)(x.detach())
    # atom 1 at r = r0 counts n/m = 0.5 (the limit); atom 2 at r = 4 r0: (1-4^6)/(1-4^12)
    assert c.item() == pytest.approx(0.5 + (1 - 4 ** 6) / (1 - 4 ** 12), abs=1e-12)
    # a group overlapping itself skips a == b
    c2 = Coordination([0, 1], [0, 1], r0=1.0)(x.detach())
    sw = (1 - 0.5 ** 6) / (1 - 0.5 ** 12)
    assert c2.item() == pytest.approx(2 * sw, abs=1e-12)


def test_cvset_and_callable_cv():
    cvs = CVSet([Distance(0, 1, name="d01"), CV(lambda x: x[:, 0, 0], "x0")])
    x = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = cvs(x)
    assert s.shape == (4, 2) and cvs.names == ["d01", "x0"] and cvs.periodic == [False, False]
    assert cvs["x0"] is cvs[1]


def test_nan_cv_and_bad_input():
    with pytest.raises(ValueError, match="NaN at sample 1"):
        CV(lambda x: torch.tensor([0.0, float("nan")]), "bad")(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \(B, n_atoms, 3\)"):
        Dihedral(0, 1, 2, 3)(torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="out of range"):
        Dihedral(0, 1, 2, 9)(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="distinct"):
        Dihedral(0, 1, 1, 3)
    with pytest.raises(ValueError, match="unique"):
        CVSet([Distance(0, 1), Distance(0, 1)])
    with pytest.raises(ValueError, match="NaN"):  # coincident atoms make the dihedral undefined
        x = torch.zeros(1, 4, 3)
        x[0, 3] = torch.tensor([float("nan"), 0, 0])
        Dihedral(0, 1, 2, 3)(x)


def test_alanine_phi_psi_against_mdtraj():
    md = pytest.importorskip("mdtraj")
    from sciffusion.domains.boltzmann.energies import alanine_dipeptide

    _, top, pos = alanine_dipeptide("vacuum", platform="Reference")
    names = [f"{a.residue.name}:{a.name}" for a in top.atoms]
    assert [names[i] for i in (4, 6, 8, 14, 16)] == ["ACE:C", "ALA:N", "ALA:CA", "ALA:C", "NME:N"]
    # large random perturbations (0.08 nm) of the start give dihedrals of both signs
    rng = np.random.default_rng(3)
    frames = pos[None] + 0.08 * rng.standard_normal((64,) + pos.shape)
    traj = md.Trajectory(frames, top)
    phi_idx, phi_md = md.compute_phi(traj)
    psi_idx, psi_md = md.compute_psi(traj)
    assert tuple(phi_idx[0]) == (4, 6, 8, 14) and tuple(psi_idx[0]) == (6, 8, 14, 16)
    s = phi_psi_alanine()(torch.from_numpy(frames))
    # mdtraj computes in float32: agreement to ~1e-5 rad, sign included
    np.testing.assert_allclose(s[:, 0].numpy(), phi_md[:, 0], atol=1e-4)
    np.testing.assert_allclose(s[:, 1].numpy(), psi_md[:, 0], atol=1e-4)
    assert (phi_md < 0).any() and (phi_md > 0).any()  # both signs exercised

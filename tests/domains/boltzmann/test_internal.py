"""Internal coordinates: NeRF round trips, torsion signs, the exact volume element against
autograd, and the Boltzmann density over standardized internal coordinates checked by
importance sampling against 1-D quadratures of a molecule whose energy factorises."""

import math

import pytest
import torch

from sciffusion.domains.boltzmann.cvs import dihedral_angle
from sciffusion.domains.boltzmann.energies import TorchEnergy
from sciffusion.domains.boltzmann.internal import InternalCoordinateEnergy, ZMatrix, euler_zyz, nerf_place

# a branched six-atom molecule: 0-1-2-3 chain with 4 on 1 and 5 on 2
BRANCHED = [(0, 1), (1, 2), (2, 3), (1, 4), (2, 5)]


def random_molecule(n_frames, gen):
    """Bonded-looking random geometry of BRANCHED (bonds 0.8-1.2, angles 1.4-2.4 rad)."""
    zm = ZMatrix(6, BRANCHED)
    sb, sa, st = zm.slices()
    q = torch.empty(n_frames, zm.n_dof, dtype=torch.float64)
    q[:, sb] = 0.8 + 0.4 * torch.rand(n_frames, 5, generator=gen, dtype=torch.float64)
    q[:, sa] = 1.4 + 1.0 * torch.rand(n_frames, 4, generator=gen, dtype=torch.float64)
    q[:, st] = (2 * torch.rand(n_frames, 3, generator=gen, dtype=torch.float64) - 1) * math.pi
    return zm, q


def test_zmatrix_rows_place_every_atom_from_earlier_bonded_atoms():
    zm = ZMatrix(6, BRANCHED)
    assert sorted(zm.order) == list(range(6))
    pos = {a: p for p, a in enumerate(zm.order)}
    bonds = {frozenset(b) for b in BRANCHED}
    for p, (i, j, k, l) in enumerate(zm.rows[3:], start=3):
        assert frozenset((i, j)) in bonds and frozenset((j, k)) in bonds
        assert max(pos[j], pos[k], pos[l]) < p and len({i, j, k, l}) == 4
    assert zm.n_dof == 12


def test_round_trip_and_torsion_sign_match_the_dihedral_cv():
    zm, q = random_molecule(50, torch.Generator().manual_seed(0))
    x = zm.to_cartesian(q)
    # float64 round trip: q -> x -> q recovers q to rounding (1e-12 over ~10 flops per atom)
    assert torch.allclose(zm.to_internal(x), q, atol=1e-12)
    for p, (i, j, k, l) in enumerate(zm.rows[3:]):
        assert torch.allclose(dihedral_angle(x, i, j, k, l), q[:, zm.slices()[2]][:, p], atol=1e-12)
    # and x -> q -> x reproduces every interatomic distance (the frame is fixed, distances are not)
    y = zm.to_cartesian(zm.to_internal(x))
    assert torch.allclose(torch.cdist(x, x), torch.cdist(y, y), atol=1e-12)


def test_nerf_place_geometry():
    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(20, 3, generator=g, dtype=torch.float64) for _ in range(3))
    r = 0.5 + torch.rand(20, generator=g, dtype=torch.float64)
    th = 0.3 + 2.5 * torch.rand(20, generator=g, dtype=torch.float64)
    ph = (2 * torch.rand(20, generator=g, dtype=torch.float64) - 1) * math.pi
    d = nerf_place(a, b, c, r, th, ph)
    x = torch.stack([a, b, c, d], 1)
    assert torch.allclose((d - c).norm(dim=-1), r, atol=1e-12)
    u, v = d - c, b - c
    assert torch.allclose(torch.acos((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))), th, atol=1e-10)
    assert torch.allclose(dihedral_angle(x, 3, 2, 1, 0), ph, atol=1e-10)


def test_log_det_jacobian_matches_autograd_with_rigid_body_dofs():
    r"""x = R(alpha, beta, gamma) X(q) + t has |det dx/d(t, alpha, beta, gamma, q)| =
    sin(beta) |J(q)| exactly (18 x 18 here)."""
    zm, q = random_molecule(4, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    for f in range(q.shape[0]):
        rigid = torch.cat([torch.randn(3, generator=g, dtype=torch.float64),
                           torch.tensor([0.7, 1.1, -2.0], dtype=torch.float64)])

        def full(v):
            t, ang, qq = v[:3], v[3:6], v[6:]
            R = euler_zyz(ang[0:1], ang[1:2], ang[2:3])[0]
            return (zm.to_cartesian(qq[None])[0] @ R.T + t).reshape(-1)

        v = torch.cat([rigid, q[f]])
        jac = torch.autograd.functional.jacobian(full, v)
        assert jac.shape == (18, 18)
        logdet = torch.linalg.slogdet(jac)[1]
        expected = math.log(math.sin(1.1)) + zm.log_det_jacobian(q[f:f + 1])[0]
        # float64 determinant of an 18 x 18 well-conditioned matrix: 1e-9 leaves room for rounding
        assert abs(float(logdet - expected)) < 1e-9


def test_alanine_zmatrix_has_phi_and_psi_as_coordinates():
    pytest.importorskip("openmmtools")
    from sciffusion.domains.boltzmann.cvs import phi_psi_alanine
    from sciffusion.domains.boltzmann.energies import alanine_dipeptide

    _, top, pos = alanine_dipeptide("vacuum")
    zm = ZMatrix.from_topology(top)
    x = torch.as_tensor(pos)[None]
    q = zm.to_internal(x)
    i_phi, i_psi = zm.torsion_index(4, 6, 8, 14), zm.torsion_index(6, 8, 14, 16)
    assert i_phi is not None and i_psi is not None
    g = torch.Generator().manual_seed(0)
    qq = q.repeat(16, 1)
    qq[:, i_phi] = (2 * torch.rand(16, generator=g, dtype=torch.float64) - 1) * math.pi
    qq[:, i_psi] = (2 * torch.rand(16, generator=g, dtype=torch.float64) - 1) * math.pi
    cv = phi_psi_alanine()(zm.to_cartesian(qq))
    # the CVs (checked against mdtraj in test_cvs) equal the coordinates, sign included; the
    # difference is taken on the circle (values near +-pi)
    d = torch.remainder(cv - qq[:, [i_phi, i_psi]] + math.pi, 2 * math.pi) - math.pi
    assert d.abs().max() < 1e-10
    assert torch.allclose(torch.cdist(zm.to_cartesian(q), zm.to_cartesian(q)), torch.cdist(x, x), atol=1e-12)


# ------------------------------------------------------------------------------------------
# a four-atom chain whose energy depends on internal coordinates only: p(q) factorises
# ------------------------------------------------------------------------------------------
KB, R0, KA, TH0 = 9.0, 1.0, 20.0, 1.9


def torsion_v(phi):
    return 1.5 * torch.cos(2 * phi) + 0.6 * torch.sin(phi)


class Chain4(TorchEnergy):
    """U = sum KB/2 (r - R0)^2 + sum KA/2 (theta - TH0)^2 + V(phi) on the chain 0-1-2-3."""

    def __init__(self):
        super().__init__((4, 3))

    def potential(self, x):
        zm = ZMatrix(4, [(0, 1), (1, 2), (2, 3)], root=0)
        q = zm.to_internal(x)
        return (0.5 * KB * (q[:, :3] - R0) ** 2).sum(1) + (0.5 * KA * (q[:, 3:5] - TH0) ** 2).sum(1) \
            + torsion_v(q[:, 5])


def chain_energy(torsion_prior_std=math.pi):
    zm = ZMatrix(4, [(0, 1), (1, 2), (2, 3)], root=0)
    q0 = torch.tensor([[R0, R0, R0, TH0, TH0, 0.3]], dtype=torch.float64)
    ref = zm.to_cartesian(q0)[0]
    scales = torch.tensor([0.4, 0.4, 0.4, 0.25, 0.25, 1.2], dtype=torch.float64)
    return InternalCoordinateEnergy(Chain4(), zm, ref, scales=scales, torsion_prior_std=torsion_prior_std)


def quad(f, lo, hi, n=200001):
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.trapezoid(f(t), t)


def exact_chain():
    pr = lambda r: r ** 2 * torch.exp(-0.5 * KB * (r - R0) ** 2)  # noqa: E731
    pa = lambda a: torch.sin(a) * torch.exp(-0.5 * KA * (a - TH0) ** 2)  # noqa: E731
    pt = lambda t: torch.exp(-torsion_v(t))  # noqa: E731
    return {"mean_r": float(quad(lambda r: r * pr(r), 0, 4) / quad(pr, 0, 4)),
            "mean_r_no_jacobian": R0,
            "mean_theta": float(quad(lambda a: a * pa(a), 0, math.pi) / quad(pa, 0, math.pi)),
            "p_phi_pos": float(quad(pt, 0, math.pi) / quad(pt, -math.pi, math.pi))}


def importance_estimates(energy, n, gen, std=1.6, wrap=True):
    """Self-normalised importance sampling from z ~ N(0, std^2 I) for exp(-U~) (+ the wrap term)."""
    z = std * torch.randn(n, energy.zmatrix.n_dof, generator=gen, dtype=torch.float64)
    lw = -energy(z) + 0.5 * (z ** 2).sum(1) / std ** 2
    if wrap:
        lw = lw + energy.log_wrap_weight(z)
    lw = torch.where(energy.in_domain(z), lw, torch.full_like(lw, -math.inf))
    w = torch.softmax(lw, 0)
    q = energy.to_internal_q(z)
    phi = torch.remainder(q[:, 5] + math.pi, 2 * math.pi) - math.pi
    ess = float(1 / (w ** 2).sum())
    return {"mean_r": float((w[:, None] * q[:, :3]).sum(0).mean()), "mean_theta": float((w[:, None] * q[:, 3:5]).sum(0).mean()),
            "p_phi_pos": float(w[phi > 0].sum()), "ess": ess,
            "sd_r": float(((w[:, None] * (q[:, :3] - (w[:, None] * q[:, :3]).sum(0)) ** 2).sum(0).mean()).sqrt())}


def test_density_over_internal_coordinates_by_importance_sampling():
    energy = chain_energy(torsion_prior_std=1.0)
    ex = exact_chain()
    est = importance_estimates(energy, 40000, torch.Generator().manual_seed(0))
    assert est["ess"] > 1000
    # tolerances: 5 standard errors of the weighted means, sd / sqrt(ESS) (3 bonds averaged: /sqrt(3) dropped)
    tol_r = 5 * est["sd_r"] / math.sqrt(est["ess"])
    assert abs(est["mean_r"] - ex["mean_r"]) < tol_r
    # the r^2 factor matters: without the Jacobian the mean bond would be R0, 5 tolerances away
    assert abs(ex["mean_r"] - ex["mean_r_no_jacobian"]) > 4 * tol_r
    assert abs(est["mean_theta"] - ex["mean_theta"]) < 5 * 0.25 / math.sqrt(est["ess"])
    p = ex["p_phi_pos"]
    tol_p = 5 * math.sqrt(p * (1 - p) / est["ess"])
    assert abs(est["p_phi_pos"] - p) < tol_p
    # and the periodisation term matters: without it the confining factor biases P(phi > 0)
    no_wrap = importance_estimates(energy, 40000, torch.Generator().manual_seed(0), wrap=False)
    assert abs(no_wrap["p_phi_pos"] - p) > 2 * tol_p


def test_hessian_scales_and_minimise_on_the_chain():
    energy = chain_energy()
    zm = energy.zmatrix
    q_min = torch.tensor([[R0, R0, R0, TH0, TH0, 0.0]], dtype=torch.float64)
    # V(phi) = 1.5 cos 2phi + 0.6 sin phi: minimum where V' = -3 sin 2phi + 0.6 cos phi = 0, cos phi != 0:
    # sin phi = 0.1, on the branch near -pi/2 ... take the global minimum on a fine grid as the oracle
    t = torch.linspace(-math.pi, math.pi, 2000001, dtype=torch.float64)
    phi_min = float(t[torsion_v(t).argmin()])
    q_min[0, 5] = phi_min
    x = zm.to_cartesian(q_min + torch.tensor([[0.1, -0.05, 0.08, 0.1, -0.1, 0.2]], dtype=torch.float64))
    xm = InternalCoordinateEnergy.minimise(energy.cartesian_energy, zm, x[0])
    qm = zm.to_internal(xm[None])[0]
    # grid spacing 3e-6 rad; L-BFGS to gradient 1e-6: 1e-5 on every coordinate
    assert torch.allclose(qm, q_min[0], atol=1e-5)
    s = InternalCoordinateEnergy.hessian_scales(energy.cartesian_energy, zm, qm)
    v2 = float(-6 * torch.cos(torch.tensor(2 * phi_min)) - 0.6 * torch.sin(torch.tensor(phi_min)))
    exact = torch.tensor([KB ** -0.5] * 3 + [KA ** -0.5] * 2 + [min(v2 ** -0.5, 1.0)], dtype=torch.float64)
    exact[:3] = exact[:3].clamp(max=0.05)  # the default caps (0.05, 0.5, 1.0)
    exact[3:5] = exact[3:5].clamp(max=0.5)
    # central differences of an exact gradient: O(h^2) = 1e-6 relative
    assert torch.allclose(s, exact, rtol=1e-5)


def test_whitening_makes_the_hessian_the_identity():
    zm = ZMatrix(4, [(0, 1), (1, 2), (2, 3)], root=0)
    t = torch.linspace(-math.pi, math.pi, 200001, dtype=torch.float64)
    q0 = torch.tensor([[R0, R0, R0, TH0, TH0, float(t[torsion_v(t).argmin()])]], dtype=torch.float64)
    energy = InternalCoordinateEnergy(Chain4(), zm, zm.to_cartesian(q0)[0], whiten=True, min_eigenvalue=1e-3)
    assert energy.setup_calls == 4 * zm.n_dof  # diagonal and full Hessian, 2 (3N-6) calls each
    # in the whitened units the Hessian of U~ at z = 0 is V^T H V / lambda = I; same finite-difference
    # step as the whitening, so only rounding remains (1e-6)
    assert torch.allclose(energy.hessian(), torch.eye(zm.n_dof, dtype=torch.float64), atol=1e-6)
    # and from_cartesian inverts to_cartesian through the non-diagonal map
    z = torch.randn(5, zm.n_dof, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.3
    assert torch.allclose(energy.from_cartesian(energy.to_cartesian(z)), z, atol=1e-10)


def test_scale_overrides_keep_a_cv_torsion_out_of_the_whitening():
    zm = ZMatrix(4, [(0, 1), (1, 2), (2, 3)], root=0)
    t = torch.linspace(-math.pi, math.pi, 200001, dtype=torch.float64)
    q0 = torch.tensor([[R0, R0, R0, TH0, TH0, float(t[torsion_v(t).argmin()])]], dtype=torch.float64)
    energy = InternalCoordinateEnergy(Chain4(), zm, zm.to_cartesian(q0)[0], whiten=True, scale_overrides={5: 1.5},
                                    min_eigenvalue=1e-3)
    m = energy.transform
    # the torsion moves alone, with its own scale; the rest is whitened among itself
    assert torch.all(m[5, :5] == 0) and torch.all(m[:5, 5] == 0) and abs(abs(float(m[5, 5])) - 1.5) < 1e-12
    h = energy.hessian()
    assert torch.allclose(h[:5, :5], torch.eye(5, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match="scale_overrides"):
        InternalCoordinateEnergy(Chain4(), zm, zm.to_cartesian(q0)[0], scale_overrides={6: 1.0})


def test_energy_gradient_is_exact():
    energy = chain_energy()
    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    u, f = energy.energy_and_forces(z)
    eps = 1e-6
    for i in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[i] = eps
        fd = (energy(z + e) - energy(z - e)) / (2 * eps)
        assert torch.allclose(-f[:, i], fd, atol=1e-6)  # central difference, O(eps^2) * third derivative


def test_bad_input():
    with pytest.raises(ValueError, match="not connected"):
        ZMatrix(4, [(0, 1), (2, 3)])
    with pytest.raises(ValueError, match="n_atoms"):
        ZMatrix(2, [(0, 1)])
    with pytest.raises(ValueError, match="distinct"):
        ZMatrix(3, [(0, 0), (1, 2)])
    zm = ZMatrix(6, BRANCHED)
    with pytest.raises(ValueError, match=r"q must have shape \(B, 12\)"):
        zm.to_cartesian(torch.zeros(2, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6, 3\)"):
        zm.to_internal(torch.zeros(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="event_shape"):
        InternalCoordinateEnergy(Chain4(), zm, torch.zeros(6, 3))
    energy = chain_energy()
    with pytest.raises(ValueError, match="x must have shape"):
        energy(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="torsion_prior_std"):
        chain_energy(torsion_prior_std=0.0)


def test_adjoint_sampler_in_internal_coordinates_recovers_the_torsion_basins():
    """The whole chain: Adjoint Sampling on z, path weights plus the periodisation term, against
    the torsion quadrature (V has basins at phi ~ -pi/2 and +pi/2, P(phi > 0) = 0.26)."""
    from sciffusion import smc
    from sciffusion.domains.boltzmann.sampler import AdjointSampler

    energy = chain_energy()
    smp = AdjointSampler((6,), sigma_max=1.5, num_steps=40, hidden=64, depth=2, lr=2e-3, max_adjoint_norm=20.0)
    g = torch.Generator().manual_seed(0)
    smp.fit(energy, iterations=40, generator=g, samples_per_iteration=256, gradient_steps=10, batch_size=256,
            buffer_size=4096)
    res = smp.simulate(4000, g, use_ema=True)
    lw = smp.log_weights(res, energy(res.x)) + energy.log_wrap_weight(res.x)
    lw = torch.where(energy.in_domain(res.x), lw, torch.full_like(lw, -math.inf))
    w = torch.softmax(lw, 0)
    q = energy.to_internal_q(res.x)
    phi = torch.remainder(q[:, 5] + math.pi, 2 * math.pi) - math.pi
    ess = float(smc.ess(lw))
    p = exact_chain()["p_phi_pos"]
    assert ess > 200
    # 5 standard errors of a weighted proportion with this ESS (measured: 0.248 at ESS 1182 of 4000,
    # raw fraction 0.41: the weights do the correcting)
    assert abs(float(w[phi > 0].sum()) - p) < 5 * math.sqrt(p * (1 - p) / ess)

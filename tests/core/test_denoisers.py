"""The denoiser wrapper: every parameterization converts back to (x0, eps) exactly."""

import pytest
import torch

from sciffusion.denoisers import PARAMETERIZATIONS, Denoiser
from sciffusion.processes import EDM, VE, VP, JointProcess, Linear, SubVP

PROCESSES = [VP(), SubVP(), VE(), EDM(), Linear()]


def _target(kind, x0, eps, p, t):
    """What a perfect model of each parameterization outputs, from the definitions in the table."""
    a, s, da, ds = (c[:, None] for c in (p.alpha(t), p.sigma(t), p.d_alpha(t), p.d_sigma(t)))
    return {"eps": eps, "x0": x0, "score": -eps / s, "v": a * eps - s * x0,
            "velocity": da * x0 + ds * eps}[kind]


def _setup(p, seed=0, n=6, d=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    # interior times: every conversion is well conditioned there (alpha, sigma both O(1)..O(1e-2))
    t = torch.linspace(p.t_min + 0.05 * (p.t_max - p.t_min), p.t_min + 0.8 * (p.t_max - p.t_min), n,
                       dtype=torch.float64)
    x = p.alpha(t)[:, None] * x0 + p.sigma(t)[:, None] * eps
    return x0, eps, t, x


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
@pytest.mark.parametrize("kind", PARAMETERIZATIONS)
def test_round_trip(kind, p):
    """A model outputting the exact target of ``kind`` gives back (x0, eps) to 1e-12 absolute:
    float64 round-off (1e-16) times |x| (<= 84 for EDM) times the conditioning 1/alpha, 1/sigma
    (<= ~20 at these interior times) stays below 1e-12; observed <= 7e-15."""
    x0, eps, t, x = _setup(p)
    out = _target(kind, x0, eps, p, t)
    den = Denoiser(lambda xx, tt: out, p, kind)
    got_x0, got_eps = den.predict(x, t)
    torch.testing.assert_close(got_x0, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_eps, eps, rtol=0, atol=1e-12)
    # every derived answer equals its definition
    for other in PARAMETERIZATIONS:
        method = {"eps": den.eps, "x0": den.x0, "score": den.score, "v": den.v, "velocity": den.velocity}[other]
        ref = _target(other, x0, eps, p, t)
        torch.testing.assert_close(method(x, t), ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
    assert den.nfe == 1 + len(PARAMETERIZATIONS)
    den.reset_nfe()
    assert den.nfe == 0
    torch.testing.assert_close(den(x, t), x0, rtol=0, atol=1e-10)


def test_model_receives_time_vector_in_state_dtype():
    seen = {}

    def model(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    den = Denoiser(model, VP(), "eps")
    den.predict(torch.zeros(4, 2, dtype=torch.float32), 0.5)
    assert seen["t"].shape == (4,) and seen["t"].dtype == torch.float32
    assert torch.all(seen["t"] == 0.5)


@pytest.mark.parametrize("container", ["tuple", "dict"])
def test_tuple_states_with_joint_process(container):
    """A tuple (dict) state, one process and one parameterization per component, round-trips."""
    pa, pb = VP(), VE()
    xa0, ea, t, xa = _setup(pa, 1)
    xb0, eb, _, _ = _setup(pb, 2)
    xb = pb.alpha(t)[:, None] * xb0 + pb.sigma(t)[:, None] * eb
    outs = (_target("x0", xa0, ea, pa, t), _target("score", xb0, eb, pb, t))
    if container == "dict":
        state, procs, param = {"h": xa, "adj": xb}, {"h": pa, "adj": pb}, {"h": "x0", "adj": "score"}
        model = lambda x, tt: {"h": outs[0], "adj": outs[1]}  # noqa: E731
    else:
        state, procs, param = (xa, xb), (pa, pb), ("x0", "score")
        model = lambda x, tt: outs  # noqa: E731
    den = Denoiser(model, JointProcess(procs), param)
    x0, eps = den.predict(state, t)
    x0 = tuple(x0.values()) if container == "dict" else x0
    eps = tuple(eps.values()) if container == "dict" else eps
    torch.testing.assert_close(x0[0], xa0, rtol=0, atol=1e-10)
    torch.testing.assert_close(eps[1], eb, rtol=0, atol=1e-10)
    torch.testing.assert_close(x0[1], xb0, rtol=0, atol=1e-10)
    # one name for all components also works
    den1 = Denoiser(lambda x, tt: (_target("eps", xa0, ea, pa, t), _target("eps", xb0, eb, pb, t)),
                    JointProcess((pa, pb)), "eps")
    torch.testing.assert_close(den1.x0((xa, xb), t)[1], xb0, rtol=0, atol=1e-10)


def test_errors():
    with pytest.raises(ValueError, match="eps, score, v, velocity, x0"):
        Denoiser(lambda x, t: x, VP(), "noise")
    with pytest.raises(ValueError, match="expected one of"):
        Denoiser(lambda x, t: x, JointProcess((VP(), VE())), ("eps", "flow"))
    with pytest.raises(TypeError, match="callable"):
        Denoiser(3, VP())
    den = Denoiser(lambda x, t: x[:, :1], VP(), "eps")
    with pytest.raises(ValueError, match=r"shape \(2, 1\).*\(2, 3\)"):
        den.predict(torch.zeros(2, 3), 0.5)

"""Time grids: ends, monotonicity and each grid's defining formula; check_ts errors."""

import math

import pytest
import torch

from sciffusion.processes import EDM, VE, VP, Linear, SubVP
from sciffusion.schedules import SCHEDULES, check_ts, get_schedule, karras, logsnr_uniform, quadratic, time_uniform

PROCESSES = [VP(), SubVP(), VE(), EDM(), Linear()]


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_grid_ends_and_monotone(name, p):
    ts = get_schedule(name)(p, 13)
    assert ts.dtype == torch.float64 and ts.shape == (14,)
    assert ts[0] == p.t_max and ts[-1] == p.t_min
    assert (ts[1:] < ts[:-1]).all()
    check_ts(ts, p)  # every grid passes validation


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_formulas(p):
    """Each grid's defining quantity is uniform (to float64 round-trip accuracy, 1e-9)."""
    n = 10
    u = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    hi, lo = p.t_max, p.t_min
    torch.testing.assert_close(time_uniform(p, n), hi + u * (lo - hi))
    torch.testing.assert_close(((quadratic(p, n) - lo) / (hi - lo)).sqrt(), 1 - u)
    lam = p.lam(logsnr_uniform(p, n))
    torch.testing.assert_close(lam, lam[0] + u * (lam[-1] - lam[0]), rtol=1e-9, atol=1e-9)
    # Karras et al. 2022, Eq. 5 in sigma~ = exp(-lambda)
    rho = 7.0
    s = torch.exp(-p.lam(karras(p, n, rho=rho)))
    s_hi, s_lo = math.exp(-float(p.lam(hi))), math.exp(-float(p.lam(lo)))
    ref = (s_hi ** (1 / rho) + u * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
    torch.testing.assert_close(s, ref, rtol=1e-9, atol=0)


def test_karras_on_edm_is_the_published_grid():
    """For EDM (sigma = t) the grid in t is exactly Karras's sigma_i (sigma_min 0.002, max 80, rho 7)."""
    p = EDM()
    i = torch.arange(19, dtype=torch.float64)
    ref = (80 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(karras(p, 18), ref, rtol=1e-12, atol=1e-12)


def test_explicit_ends():
    ts = logsnr_uniform(VP(), 5, t_max=0.8, t_min=0.01)
    assert ts[0] == 0.8 and ts[-1] == 0.01


def test_bad_arguments():
    p = VP()
    with pytest.raises(ValueError, match="num_steps"):
        time_uniform(p, 0)
    with pytest.raises(ValueError, match="num_steps"):
        karras(p, 2.5)
    with pytest.raises(ValueError, match="rho"):
        karras(p, 4, rho=0)
    with pytest.raises(ValueError, match="t_max"):
        quadratic(p, 4, t_max=0.1, t_min=0.2)
    with pytest.raises(ValueError, match="karras, logsnr"):
        get_schedule("cosine")


def test_check_ts_errors():
    p = VP()
    with pytest.raises(ValueError, match="1-D"):
        check_ts(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="at least 2"):
        check_ts([0.5])
    with pytest.raises(ValueError, match="NaN"):
        check_ts([1.0, float("nan"), 0.1])
    with pytest.raises(ValueError, match=r"ts\[1\]=0.5 <= ts\[2\]=0.6"):
        check_ts([1.0, 0.5, 0.6])
    with pytest.raises(ValueError, match="decrease"):
        check_ts([0.1, 0.5])
    with pytest.raises(ValueError, match="must lie in"):
        check_ts([1.5, 0.5], p)
    with pytest.raises(ValueError, match="must lie in"):
        check_ts([0.5, -0.1], p)
    with pytest.raises(ValueError, match="lambda"):
        check_ts([1.0, 0.0], p)  # sigma_0 = 0 for VP: lambda infinite
    out = check_ts([1.0, 0.5, 0.1], p)
    assert out.dtype == torch.float64

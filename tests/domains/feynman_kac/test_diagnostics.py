"""Diagnostics: ESS history, resampling events, the degeneracy warning and the figure."""

import pytest
import torch

from sciffusion import VP
from sciffusion.testing import GaussianMixture
from sciffusion.domains.feynman_kac import anneal, sample_fkc


def q_left_right():
    return GaussianMixture(torch.tensor([[-2.0], [2.0]]), torch.tensor([0.09, 1.0]))


def test_diagnostics_figure_and_degeneracy_warning():
    q = q_left_right()
    target = anneal(q.denoiser(VP()), 3.0)
    with pytest.warns(RuntimeWarning, match="degeneracy"):
        res = sample_fkc(target, (2, 1), num_particles=64, num_steps=50, threshold=0.0, noise=1.0,
                         warn_ess=0.2, generator=torch.Generator().manual_seed(0))
    # never resampling (threshold 0): 64 particles of q^3 degenerate; the history records it
    assert res.ess.shape == (50,) and float(res.min_ess.min()) < 0.2 * 64
    assert res.num_resampling_events == 0 and float(res.ess[-1]) < float(res.ess[0]) <= 64.0
    fig = res.plot_diagnostics()
    assert len(fig.axes) == 3
    assert torch.equal(res.lineages, torch.full((50,), 64.0, dtype=torch.float64))  # no resampling
    assert res.samples(torch.Generator().manual_seed(0)).shape == (2, 1)
    assert res.resampled(generator=torch.Generator().manual_seed(0)).shape == (128, 1)




def test_every_step_resampling_is_recorded():
    q = q_left_right()
    res = sample_fkc(anneal(q.denoiser(VP()), 2.0), (3, 1), num_particles=32, num_steps=20, threshold=1.0,
                     generator=torch.Generator().manual_seed(0), warn_ess=None)
    assert res.num_resampling_events == 20 and int(res.num_resampled.sum()) == 60
    assert res.resample_steps == list(range(20))


def test_lineages_count_distinct_starting_ancestors(monkeypatch):
    """Every-step resampling: the surviving-lineage count after each step equals the number of
    distinct starting particles obtained by composing the recorded ancestor maps forward (exact,
    integer), is non-increasing, and has collapsed well below N (path degeneracy) while the mean
    per-step ESS stays above N/2."""
    import sciffusion.smc as smc

    maps, orig = [], smc.resample

    def rec(log_w, scheme="systematic", generator=None):
        idx = orig(log_w, scheme, generator)
        maps.append(idx.clone())
        return idx

    monkeypatch.setattr(smc, "resample", rec)
    q = q_left_right()
    G, N, steps = 2, 64, 40
    res = sample_fkc(anneal(q.denoiser(VP()), 3.0), (G, 1), num_particles=N, num_steps=steps, threshold=1.0,
                     noise=1.0, generator=torch.Generator().manual_seed(1), warn_ess=None)
    assert len(maps) == steps
    root = torch.arange(N).expand(G, N)
    for k, idx in enumerate(maps):
        root = torch.gather(root, 1, idx)
        expected = sum(int(r.unique().numel()) for r in root) / G
        assert float(res.lineages[k]) == expected
    assert bool((res.lineages[1:] <= res.lineages[:-1]).all())
    assert float(res.lineages[-1]) < N / 4 and float(res.ess.mean()) > N / 2


"""Small networks: shapes, time conditioning and argument errors."""

import math

import pytest
import torch

from sciffusion.nn import MLP, FourierTimeEmbedding, TransformerEncoder


def test_fourier_embedding():
    """Shape (B, dim); each sin/cos pair lies on the unit circle (sin^2 + cos^2 = 1 to 1e-6, float32);
    same seed -> same frequencies; scalar t broadcasts."""
    e = FourierTimeEmbedding(8, scale=3.0, seed=5)
    out = e(torch.linspace(0, 1, 4))
    assert out.shape == (4, 8)
    torch.testing.assert_close(out[:, :4] ** 2 + out[:, 4:] ** 2, torch.ones(4, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], torch.cat([(2 * math.pi * e.w / 3).sin(), (2 * math.pi * e.w / 3).cos()]))
    assert torch.equal(FourierTimeEmbedding(8, 3.0, seed=5).w, e.w)
    assert e(torch.tensor(0.5)).shape == (1, 8)
    with pytest.raises(ValueError, match="even"):
        FourierTimeEmbedding(7)


def test_mlp_shapes_and_time_dependence():
    torch.manual_seed(0)
    m = MLP(3, hidden=16, depth=2, out_dim=5)
    x = torch.randn(6, 3)
    assert m(x, torch.rand(6)).shape == (6, 5)
    assert m(x, torch.tensor(0.3)).shape == (6, 5)  # scalar time broadcasts over the batch
    assert not torch.allclose(m(x, torch.tensor(0.1)), m(x, torch.tensor(0.9)))  # uses t
    assert MLP(4)(torch.randn(2, 4), torch.rand(2)).shape == (2, 4)
    # double precision works end to end (the likelihood and oracle comparisons need it)
    md = MLP(2, hidden=8, depth=1).double()
    assert md(torch.randn(3, 2, dtype=torch.float64), torch.rand(3, dtype=torch.float64)).dtype == torch.float64
    # gradients reach every parameter
    m(x, torch.rand(6)).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    for bad in [dict(dim=0), dict(dim=2, hidden=0), dict(dim=2, depth=0)]:
        with pytest.raises(ValueError, match="positive"):
            MLP(**bad)


def test_transformer_tokens_and_vectors():
    torch.manual_seed(0)
    tok = TransformerEncoder(7, vocab_size=5, max_len=12, d_model=16, nhead=2, num_layers=1)
    ids = torch.randint(0, 5, (3, 10))
    assert tok(ids, torch.rand(3)).shape == (3, 10, 7)
    a, b = tok(ids, torch.full((3,), 0.1)), tok(ids, torch.full((3,), 0.9))
    assert not torch.allclose(a, b)  # time-conditioned
    vec = TransformerEncoder(2, in_dim=4, max_len=6, d_model=8, nhead=2, num_layers=1)
    assert vec(torch.randn(2, 6, 4), torch.rand(2)).shape == (2, 6, 2)
    free = TransformerEncoder(5, vocab_size=5, max_len=8, d_model=8, nhead=2, num_layers=1, time_conditioned=False)
    assert free(torch.randint(0, 5, (2, 8))).shape == (2, 8, 5)
    # permutation of the batch permutes the output (rows are independent)
    perm = torch.tensor([2, 0, 1])
    t = torch.rand(3)
    torch.testing.assert_close(tok(ids[perm], t[perm]), tok(ids, t)[perm])


def test_transformer_errors():
    with pytest.raises(ValueError, match="exactly one"):
        TransformerEncoder(3)
    with pytest.raises(ValueError, match="exactly one"):
        TransformerEncoder(3, vocab_size=4, in_dim=2)
    m = TransformerEncoder(3, vocab_size=4, max_len=4, d_model=8, nhead=2, num_layers=1)
    with pytest.raises(ValueError, match="max_len 4"):
        m(torch.zeros(1, 5, dtype=torch.long), torch.rand(1))
    with pytest.raises(ValueError, match="pass t"):
        m(torch.zeros(1, 3, dtype=torch.long))

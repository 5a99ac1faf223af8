"""Score networks of graph_sde: symmetry, zero diagonal, masks, permutation equivariance, padding."""

import pytest
import torch

pytest.importorskip("torch_geometric")

from sciffusion.domains.graph_sde.nets import (GraphScoreModel, ScoreNetworkA, ScoreNetworkX,  # noqa: E402
                                               adjacency_powers, node_mask_from_state)

B, N, F = 3, 7, 4
SMALL_A = dict(num_layers=2, hidden=8, attn_dim=8, c_init=2, c_hid=3, c_final=2, num_heads=2, time_dim=8)
SMALL_X = dict(depth=2, hidden=8, time_dim=8)


def _state(num_nodes=(7, 5, 3), n=N, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(n) < torch.tensor(num_nodes)[:, None]
    m = mask.to(dtype)
    x = torch.randn(len(num_nodes), n, F, generator=g, dtype=dtype) * m[..., None]
    u = torch.randn(len(num_nodes), n, n, generator=g, dtype=dtype).triu(1)
    adj = (u + u.transpose(1, 2)) * m[:, :, None] * m[:, None, :]
    return x, adj, mask


def _model(seed=0):
    torch.manual_seed(seed)
    return GraphScoreModel(F, SMALL_X, SMALL_A).double()


def test_output_symmetric_zero_diagonal_and_masked_exactly():
    x, adj, mask = _state()
    ex, ea = _model()((x, adj), torch.full((B,), 0.3, dtype=torch.float64))
    assert torch.equal(ea, ea.transpose(1, 2))  # symmetrised as 0.5 (S + S^T): bitwise symmetric
    assert torch.equal(ea.diagonal(dim1=1, dim2=2), torch.zeros(B, N, dtype=torch.float64))
    pad = ~mask
    assert torch.equal(ex[pad], torch.zeros_like(ex[pad]))
    edge_pad = pad[:, :, None] | pad[:, None, :]
    assert torch.equal(ea[edge_pad], torch.zeros_like(ea[edge_pad]))
    assert bool((ex[mask] != 0).all())  # every real node's output is nonzero (not a masked-out net)
    real_edges = mask[:, :, None] & mask[:, None, :] & ~torch.eye(N, dtype=torch.bool)
    assert bool((ea[real_edges] != 0).all())


def test_each_graph_is_scored_independently_of_the_batch():
    """Graph k's outputs in a batch equal its outputs alone (no mixing across the batch through
    the masks, the attention or the time embedding; 1e-12: float64 round-off of batched matmuls)."""
    x, adj, mask = _state()
    model = _model()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    ex, ea = model((x, adj), t, mask=mask)
    for k in range(B):
        sx, sa = model((x[k:k + 1], adj[k:k + 1]), t[k:k + 1], mask=mask[k:k + 1])
        torch.testing.assert_close(sx[0], ex[k], rtol=0, atol=1e-12)
        torch.testing.assert_close(sa[0], ea[k], rtol=0, atol=1e-12)


def test_x_network_is_gdss_eq8_by_hand():
    r"""ScoreNetworkX against GDSS Eq. 8 written out on the path 0-1-2 padded to 4 nodes:
    :math:`\tilde A = A + I` on the real nodes has degrees (2, 3, 2), so the propagation matrix
    :math:`\tilde D^{-1/2}\tilde A\tilde D^{-1/2}` is [[1/2, 1/\sqrt6, 0], [1/\sqrt6, 1/3, 1/\sqrt6],
    [0, 1/\sqrt6, 1/2]]; :math:`H_{l+1} = \tanh(P H_l W_l + b_l + e_l(t))`, the output the final
    MLP of :math:`[H_0\|H_1\|H_2]` on the real nodes and exactly 0 on the padded one. float64;
    1e-12 for round-off (the same arithmetic in another order)."""
    torch.manual_seed(0)
    net = ScoreNetworkX(F, **SMALL_X).double()
    adj = torch.zeros(1, 4, 4, dtype=torch.float64)
    adj[0, 0, 1] = adj[0, 1, 0] = adj[0, 1, 2] = adj[0, 2, 1] = 1.0
    mask = torch.tensor([[True, True, True, False]])
    x = torch.randn(1, 4, F, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * mask[..., None]
    t = torch.tensor([0.3], dtype=torch.float64)
    r = 1 / 6 ** 0.5
    prop = torch.tensor([[0.5, r, 0.0], [r, 1 / 3, r], [0.0, r, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        temb = net.time(t, 1, torch.float64)[0]
        h = x[0, :3]
        hs = [h]
        for conv, proj in zip(net.convs, net.time_proj):
            h = torch.tanh(prop @ h @ conv.lin.weight.T + conv.bias + proj(temb))
            hs.append(h)
        expected = net.final(torch.cat(hs, -1))
        out = net(x, adj, mask, t)
    torch.testing.assert_close(out[0, :3], expected, rtol=0, atol=1e-12)
    assert torch.equal(out[0, 3], torch.zeros(F, dtype=torch.float64))


def test_permutation_equivariance():
    """f(P X, P A P^T) = (P f_X, P f_A P^T) for a relabelling of the nodes (padded ones included,
    with the mask permuted alike). float64; 1e-12 allows the round-off of sums taken in another
    order (GCN propagation, attention, degree normalisation)."""
    x, adj, mask = _state()
    model = _model()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    ex, ea = model((x, adj), t, mask=mask)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    ex2, ea2 = model((x[:, perm], adj[:, perm][:, :, perm]), t, mask=mask[:, perm])
    torch.testing.assert_close(ex2, ex[:, perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(ea2, ea[:, perm][:, :, perm], rtol=0, atol=1e-12)


def test_real_nodes_do_not_see_the_padding():
    """The same graph padded to 7 and to 10 nodes gets the same outputs on its real nodes
    (padded rows are zero and masked out of every propagation; 1e-12 for float64 round-off)."""
    x, adj, mask = _state()
    model = _model()
    t = torch.full((B,), 0.4, dtype=torch.float64)
    ex, ea = model((x, adj), t, mask=mask)
    pad = torch.nn.functional.pad
    ex2, ea2 = model((pad(x, (0, 0, 0, 3)), pad(adj, (0, 3, 0, 3))), t, mask=pad(mask, (0, 3)))
    torch.testing.assert_close(ex2[:, :N], ex, rtol=0, atol=1e-12)
    torch.testing.assert_close(ea2[:, :N, :N], ea, rtol=0, atol=1e-12)
    assert torch.equal(ea2[:, N:], torch.zeros_like(ea2[:, N:]))


def test_networks_see_both_components():
    x, adj, mask = _state()
    model = _model()
    t = torch.full((B,), 0.4, dtype=torch.float64)
    ex, ea = model((x, adj), t, mask=mask)
    x2 = x.clone()
    x2[0, 0] += 1.0
    adj2 = adj.clone()
    adj2[0, 0, 1] += 1.0
    adj2[0, 1, 0] += 1.0
    assert not torch.allclose(model((x2, adj), t, mask=mask)[1][0], ea[0])  # A-net reads X
    assert not torch.allclose(model((x, adj2), t, mask=mask)[0][0], ex[0])  # X-net reads A
    assert not torch.allclose(model((x, adj), t + 0.3, mask=mask)[0], ex)  # time conditioning


def test_mask_from_state_and_adjacency_powers():
    x, adj, mask = _state()
    assert torch.equal(node_mask_from_state(x, adj), mask)
    p = adjacency_powers(adj, 3)
    assert p.shape == (B, 3, N, N)
    torch.testing.assert_close(p[:, 2], adj @ adj @ adj, rtol=0, atol=1e-12)


def test_bad_input():
    model = _model()
    x, adj, mask = _state()
    t = torch.zeros(B, dtype=torch.float64)
    with pytest.raises(ValueError, match="features"):
        model((x[..., :2], adj), t)
    with pytest.raises(ValueError, match="state must be"):
        model((x, adj[:, :5, :5]), t)
    with pytest.raises(ValueError, match="num_features"):
        GraphScoreModel(0)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        ScoreNetworkA(F, attn_dim=6, num_heads=4)
    assert isinstance(ScoreNetworkX(F), torch.nn.Module)

r"""Score networks of GDSS (Jo et al. 2022, Sec. 3.3 and App. C), written anew with a time input.

A graph with at most ``N`` nodes is the pair ``(X, A)``: node features ``X`` of shape ``(B, N, F)``
and a weighted symmetric adjacency ``A`` of shape ``(B, N, N)`` with zero diagonal; a boolean node
mask ``(B, N)`` marks the real nodes (padded rows and columns are zero). Both networks see both
``X`` and ``A`` (the point of GDSS's *system* of SDEs: the score of each component depends on the
other).

* :class:`ScoreNetworkX` (GDSS Eq. 8): dense GCN layers (torch-geometric's ``DenseGCNConv``),

  .. math:: H_{l+1} = \tanh\big(\tilde D^{-1/2}\tilde A\tilde D^{-1/2} H_l W_l + b_l + e_l(t)\big),
            \qquad \hat\varepsilon_X = \mathrm{MLP}([H_0\,\|\,H_1\,\|\cdots\|\,H_L]),

  with :math:`\tilde A = A + I` and :math:`e_l(t)` a learned projection of a Fourier embedding of
  the time (GDSS itself has no time input; its output is divided by :math:`\sigma_t`).
* :class:`ScoreNetworkA` (GDSS Eq. 9): graph multi-head attention (Baek et al. 2021) over the
  adjacency powers :math:`[A, A^2, \dots, A^{c}]` held as edge channels. One
  :class:`AttentionLayer` maps ``c_in`` edge channels to ``c_out``: for every input channel
  :math:`A_k`, :math:`Q = \mathrm{GCN}_Q(H, A_k)`, :math:`K = \mathrm{GCN}_K(H, A_k)`,
  :math:`V = \mathrm{GCN}_V(H, A_k)` and the per-channel attention map

  .. math:: S_k = \mathrm{sym}\Big(\tfrac1{n_h}\sum_{h}\tanh\big(Q_h K_h^\top/\sqrt{d}\big)\Big),

  then :math:`H' = \tanh(\mathrm{MLP}([V_1\|\cdots\|V_{c_{in}}]))` and the new edge channels
  :math:`A' = \mathrm{sym}(\mathrm{MLP}_{edge}([S_1..S_{c_{in}}, A_1..A_{c_{in}}]))`. The output is an
  edge MLP over all channels of all layers (and the time embedding), symmetrised, with zero
  diagonal and masked rows/columns.

Everything is permutation-equivariant in the nodes: GCN propagation, the attention scores, the
per-edge MLPs and the masks commute with a relabelling :math:`P X, P A P^\top` (tested to float
round-off).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from sciffusion.nn import FourierTimeEmbedding


def _dense_gcn():
    try:
        from torch_geometric.nn import DenseGCNConv
    except ImportError as err:  # pragma: no cover - the extra is installed in CI
        raise ImportError('graph_sde needs torch-geometric: pip install "sciffusion[graphs]"') from err
    return DenseGCNConv


def mask_nodes(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded rows of node features ``(B, N, F)``."""
    return x * mask.unsqueeze(-1).to(x.dtype)


def mask_edges(adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded rows and columns of ``(B, N, N)`` or ``(B, C, N, N)`` edge tensors."""
    m = mask.to(adj.dtype)
    if adj.ndim == 4:
        m = m.unsqueeze(1)
    return adj * m.unsqueeze(-1) * m.unsqueeze(-2)


def adjacency_powers(adj: torch.Tensor, c: int) -> torch.Tensor:
    r""":math:`[A, A^2, \dots, A^c]` stacked as channels: ``(B, N, N) -> (B, c, N, N)``."""
    powers = [adj]
    for _ in range(c - 1):
        powers.append(powers[-1] @ adj)
    return torch.stack(powers, dim=1)


def node_mask_from_state(x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """Real nodes of a (noised) state: rows of ``X`` or ``A`` with any nonzero entry.

    Padded nodes are kept exactly zero by the state constraint in every sampler and in the
    perturbation (``sciffusion`` node masks), while a real node's entries are nonzero with
    probability one once noise was added, so this recovers the mask that built the state. Pass
    the mask explicitly where the state may be clean data.
    """
    return (x.abs().sum(-1) + adj.abs().sum(-1)) > 0


class _EdgeMLP(nn.Module):
    """A per-entry MLP with ELU (GDSS's ``MLP`` with ``activate_func=F.elu``)."""

    def __init__(self, num_layers: int, din: int, dhid: int, dout: int):
        super().__init__()
        dims = [din] + [dhid] * (num_layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            h = F.elu(layer(h))
        return self.layers[-1](h)


class _Time(nn.Module):
    """Fourier embedding of the time followed by a SiLU MLP: ``(B,) -> (B, dim)``."""

    def __init__(self, dim: int, t_scale: float = 1.0):
        super().__init__()
        self.t_scale = float(t_scale)
        self.fourier = FourierTimeEmbedding(dim, scale=4.0)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor, batch: int, dtype) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        return self.mlp(self.fourier(t / self.t_scale).to(dtype))


class ScoreNetworkX(nn.Module):
    r"""Noise prediction for the node features (GDSS Eq. 8 plus a time input).

    Args:
        num_features: ``F``.
        depth: number of dense GCN layers.
        hidden: their width.
        time_dim: size of the time embedding.

    Shapes:
        x: ``(B, N, F)``; adj: ``(B, N, N)``; mask: ``(B, N)`` bool; t: ``(B,)`` -> ``(B, N, F)``.
    """

    def __init__(self, num_features: int, depth: int = 3, hidden: int = 32, time_dim: int = 32,
                 t_scale: float = 1.0):
        super().__init__()
        DenseGCNConv = _dense_gcn()
        self.convs = nn.ModuleList(DenseGCNConv(num_features if i == 0 else hidden, hidden) for i in range(depth))
        self.time = _Time(time_dim, t_scale)
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, hidden) for _ in range(depth))
        fdim = num_features + depth * hidden
        self.final = _EdgeMLP(3, fdim, 2 * fdim, num_features)

    def forward(self, x, adj, mask, t):
        temb = self.time(t, x.shape[0], x.dtype)
        hs = [x]
        h = x
        for conv, proj in zip(self.convs, self.time_proj):
            h = torch.tanh(conv(h, adj, mask) + proj(temb).unsqueeze(1))
            h = mask_nodes(h, mask)
            hs.append(h)
        return mask_nodes(self.final(torch.cat(hs, dim=-1)), mask)


class GraphAttention(nn.Module):
    r"""Graph multi-head attention on one edge channel (GDSS App. C; Baek et al. 2021).

    Returns ``V = GCN_V(H, A)`` and the symmetric map
    :math:`\mathrm{sym}(\tfrac1{n_h}\sum_h \tanh(Q_h K_h^\top/\sqrt{d_{out}}))`.
    """

    def __init__(self, din: int, dattn: int, dout: int, num_heads: int = 4):
        super().__init__()
        if dattn % num_heads:
            raise ValueError(f"attention width {dattn} must be a multiple of num_heads={num_heads}")
        DenseGCNConv = _dense_gcn()
        # Q, K and V are three GCNs on the same (H, A): one DenseGCNConv with their weight matrices
        # side by side computes all three with one propagation (identical arithmetic, 3x fewer calls)
        self.qkv = DenseGCNConv(din, 2 * dattn + dout)
        self.num_heads, self.dattn, self.dout = num_heads, dattn, dout

    def forward(self, h, adj, mask):
        B, N, _ = h.shape
        q, k, v = self.qkv(h, adj, mask).split([self.dattn, self.dattn, self.dout], dim=-1)
        q = q.reshape(B, N, self.num_heads, -1).transpose(1, 2)
        k = k.reshape(B, N, self.num_heads, -1).transpose(1, 2)
        s = torch.tanh(q @ k.transpose(-1, -2) / math.sqrt(self.dout)).mean(1)
        return v, 0.5 * (s + s.transpose(-1, -2))


class AttentionLayer(nn.Module):
    """``c_in`` edge channels and node features -> ``c_out`` edge channels and new node features."""

    def __init__(self, num_linears: int, din: int, dattn: int, dout: int, c_in: int, c_out: int,
                 num_heads: int, time_dim: int):
        super().__init__()
        self.attn = nn.ModuleList(GraphAttention(din, dattn, dout, num_heads) for _ in range(c_in))
        hid = 2 * max(c_in, c_out)
        self.node_mlp = _EdgeMLP(2, c_in * dout, hid, dout)
        self.edge_mlp = _EdgeMLP(num_linears, 2 * c_in, hid, c_out)
        self.time_proj = nn.Linear(time_dim, dout)

    def forward(self, h, adjc, mask, temb):
        vs, ss = zip(*(att(h, adjc[:, k], mask) for k, att in enumerate(self.attn)))
        h_out = torch.tanh(self.node_mlp(torch.cat(vs, -1)) + self.time_proj(temb).unsqueeze(1))
        h_out = mask_nodes(h_out, mask)
        e = torch.cat([torch.stack(ss, -1), adjc.permute(0, 2, 3, 1)], -1)
        a = self.edge_mlp(e).permute(0, 3, 1, 2)
        return h_out, mask_edges(a + a.transpose(-1, -2), mask)


class ScoreNetworkA(nn.Module):
    r"""Noise prediction for the adjacency (GDSS Eq. 9 plus a time input): attention layers over
    the adjacency powers, an edge MLP over every layer's channels, symmetric, zero diagonal, masked.

    Args:
        num_features: ``F`` of the node features it reads.
        num_layers: number of :class:`AttentionLayer`.
        hidden: node width; ``attn_dim``: query/key width (a multiple of ``num_heads``).
        c_init, c_hid, c_final: edge channels: powers of A at the input, hidden, last layer.
        num_linears: layers of the per-edge MLP inside each attention layer.

    Shapes:
        x: ``(B, N, F)``; adj: ``(B, N, N)``; mask: ``(B, N)``; t: ``(B,)`` -> ``(B, N, N)``.
    """

    def __init__(self, num_features: int, num_layers: int = 5, hidden: int = 32, attn_dim: int = 32,
                 c_init: int = 2, c_hid: int = 8, c_final: int = 4, num_linears: int = 2, num_heads: int = 4,
                 time_dim: int = 32, t_scale: float = 1.0):
        super().__init__()
        if num_layers < 1 or c_init < 1:
            raise ValueError(f"num_layers and c_init must be >= 1, got {num_layers}, {c_init}")
        self.c_init = c_init
        self.time = _Time(time_dim, t_scale)
        layers = []
        for i in range(num_layers):
            c_in = c_init if i == 0 else c_hid
            c_out = c_final if i == num_layers - 1 else c_hid
            layers.append(AttentionLayer(num_linears, num_features if i == 0 else hidden, attn_dim, hidden,
                                         c_in, c_out, num_heads, time_dim))
        self.layers = nn.ModuleList(layers)
        fdim = c_init + c_hid * (num_layers - 1) + c_final
        self.time_edge = nn.Linear(time_dim, 2 * fdim)
        self.final = _EdgeMLP(3, fdim, 2 * fdim, 1)

    def forward(self, x, adj, mask, t):
        temb = self.time(t, x.shape[0], x.dtype)
        adjc = adjacency_powers(adj, self.c_init)
        chans = [adjc]
        h = x
        for layer in self.layers:
            h, adjc = layer(h, adjc, mask, temb)
            chans.append(adjc)
        e = torch.cat(chans, 1).permute(0, 2, 3, 1)  # (B, N, N, fdim)
        # time enters the edge MLP as a per-sample bias of its first hidden layer
        first = self.final.layers[0]
        hid = F.elu(first(e) + self.time_edge(temb)[:, None, None, :])
        for layer in self.final.layers[1:-1]:
            hid = F.elu(layer(hid))
        out = self.final.layers[-1](hid).squeeze(-1)
        out = 0.5 * (out + out.transpose(-1, -2))
        eye = torch.eye(out.shape[-1], dtype=torch.bool, device=out.device)
        return mask_edges(out.masked_fill(eye, 0.0), mask)


class GraphScoreModel(nn.Module):
    r"""The pair of networks as one model ``((X, A), t) -> (eps_X, eps_A)`` for
    :class:`sciffusion.Denoiser` with a ``JointProcess`` (parameterization ``"eps"``).

    The node mask is read from the state (:func:`node_mask_from_state`) unless one is set
    with :meth:`set_mask` (for clean-data evaluations).

    Args:
        num_features: ``F``.
        x_net, a_net: keyword settings of :class:`ScoreNetworkX` / :class:`ScoreNetworkA`.
    """

    def __init__(self, num_features: int, x_net: dict | None = None, a_net: dict | None = None):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.x_net_cfg, self.a_net_cfg = dict(x_net or {}), dict(a_net or {})
        self.x_net = ScoreNetworkX(num_features, **self.x_net_cfg)
        self.a_net = ScoreNetworkA(num_features, **self.a_net_cfg)

    def forward(self, state, t, mask: torch.Tensor | None = None):
        x, adj = state
        if x.ndim != 3 or adj.ndim != 3 or adj.shape[1:] != (x.shape[1], x.shape[1]) or adj.shape[0] != x.shape[0]:
            raise ValueError(f"state must be (x (B, N, F), adj (B, N, N)), got {tuple(x.shape)}, {tuple(adj.shape)}")
        if x.shape[-1] != self.num_features:
            raise ValueError(f"x has {x.shape[-1]} features, the model was built for {self.num_features}")
        if mask is None:
            mask = node_mask_from_state(x, adj)
        return self.x_net(x, adj, mask, t), self.a_net(x, adj, mask, t)

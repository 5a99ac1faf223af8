"""Writes notebooks/discrete.ipynb (run: python notebooks/make_discrete.py)."""

from pathlib import Path

import nbformat as nbf

cells = [
    ("md", """# Discrete diffusion in `sciffusion.domains.discrete`

Masked (absorbing), uniform and absorbing-uniform diffusion over token sequences. Every sampler is
checked here against an **exact oracle**: a first-order Markov chain over K = 4 symbols and L = 6
sites (4096 sequences), whose denoiser p(x0 | x_t) and leave-one-out posterior p(x0^i | x_t^{-i})
come from forward–backward."""),
    ("code", """%matplotlib inline
import math, torch
import matplotlib.pyplot as plt
from sciffusion.domains.discrete import (MarkovChainOracle, MaskedProcess, UniformProcess,
    sample_first_hitting, sample_ancestral, sample_uniform)
from sciffusion.domains.discrete.losses import masked_elbo

oracle = MarkovChainOracle.random(vocab_size=4, length=6, seed=0)
process = MaskedProcess(vocab_size=4)
model = oracle.masked_model(process)          # x_t (B, L) -> log p(x0 | x_t) (B, L, V)
n = 20_000
floor = oracle.kl_from_samples(oracle.sample(n, torch.Generator().manual_seed(1)))[3]
print(f"Monte Carlo floor (exact expected plug-in KL of {n} exact draws): {floor:.4f} nats")"""),
    ("md", """## First-hitting sampling is exact; ancestral sampling approaches it as steps grow

The first-hitting sampler draws the next unmasking time in closed form,
1 - alpha_s = (1 - alpha_t) u^{1/n}, unmasks one uniformly chosen site, and calls the model once
per token. Cached ancestral sampling calls the model only when a token changed."""),
    ("code", """fh = sample_first_hitting(model, process, (n, 6), generator=torch.Generator().manual_seed(2))
rows = [("first-hitting", fh.nfe, oracle.kl_from_samples(fh.x)[0])]
for steps in (1, 2, 4, 8, 32):
    an = sample_ancestral(model, process, (n, 6), steps, generator=torch.Generator().manual_seed(2))
    rows.append((f"ancestral {steps}", int(an.nfe_per_sequence.max()), oracle.kl_from_samples(an.x)[0]))
for name, nfe, kl in rows:
    print(f"{name:15s} nfe/seq {nfe:3d}  KL {kl:.4f}")
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar([f"{r[0]}\\n{r[1]} NFE" for r in rows], [r[2] for r in rows], label="sampler")
ax.axhline(floor, color="k", ls="--", label=f"floor: E[KL] of {n} exact draws")
ax.set_yscale("log"); ax.set_ylabel("KL(samples || exact) (nats)"); ax.tick_params(axis="x", rotation=45, labelsize=7)
ax.set_title(f"{n} sequences from the 4^6 chain oracle", fontsize=9); ax.legend(fontsize=7)
fig.tight_layout()"""),
    ("md", """## The masked ELBO is tight with the exact model

With the exact denoiser the continuous-time NELBO equals -log p(x0) in expectation."""),
    ("code", """x0 = oracle.sample(2, torch.Generator().manual_seed(3))
v = masked_elbo(model, process, x0.repeat_interleave(20_000, 0), torch.Generator().manual_seed(4)).view(2, -1)
print("NELBO mean:", v.mean(1).tolist(), "+-", (v.std(1) / math.sqrt(v.shape[1])).tolist())
print("-log p(x0):", (-oracle.log_prob(x0)).tolist())"""),
    ("md", """## Uniform diffusion: the plug-in bridge needs the leave-one-out posterior

The exact reverse transition of one site is q_{t|s}(x_t^i | b) sum_v q_s(b | v) p(x0^i = v | x_t^{-i}).
Plugging the denoiser p(x0^i | x_t) in its place counts the evidence of x_t^i twice."""),
    ("code", """from sciffusion.domains.discrete import uniform_bridge
up = UniformProcess(4)
g = torch.Generator().manual_seed(5)
xt = up.perturb(oracle.sample(1, g), 0.6, g)
t, s = torch.tensor([0.6], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
loo, den = oracle.posteriors(up.emission(xt, t))
good = uniform_bridge(loo, xt, up.alpha(t), up.alpha(s))
bad = uniform_bridge(den, xt, up.alpha(t), up.alpha(s))
print("max |bridge(loo) - bridge(denoiser)| =", float((good - bad).abs().max()))
for steps in (4, 16):
    out = sample_uniform(oracle.uniform_model(up), up, (n, 6), steps, generator=torch.Generator().manual_seed(6))
    print(f"uniform sampler {steps:3d} steps: KL {oracle.kl_from_samples(out.x)[0]:.4f}")"""),
    ("md", """## Why categorical draws are float64

float32 uniforms lie on a 2^-24 grid; the Gumbel / exponential race then picks a token of per-step
probability r with probability delta / (exp(delta / r) - 1) instead of r."""),
    ("code", """d32 = 2.0 ** -24
r = torch.logspace(-10, -5, 50, dtype=torch.float64)
fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogx(r, (d32 / torch.expm1(d32 / r)) / r, label="float32 race")
ax.semilogx(r, torch.ones_like(r), "--", label="float64 inverse CDF")
ax.set_xlabel("per-step probability r"); ax.set_ylabel("selection rate / r (1 = exact)")
ax.set_title("float32 vs float64 categorical sampling", fontsize=9); ax.legend(); fig.tight_layout()
print("ratio at r = 1e-7:", d32 / math.expm1(d32 / 1e-7) / 1e-7, " at r = 1e-8:", d32 / math.expm1(d32 / 1e-8) / 1e-8)"""),
    ("md", """## A tiny model on synthetic text

A second-order Markov source over a–z and space with known entropy; a small dilated CNN trained
briefly, sampled with the first-hitting sampler."""),
    ("code", """from sciffusion.domains.discrete.sources import SecondOrderMarkovSource
from sciffusion.domains.discrete.train import train
src = SecondOrderMarkovSource()
data = src.sample(5000, 24, torch.Generator().manual_seed(0))
res, proc, cfg = train(data, vocab_size=27, process="masked", arch="cnn", arch_kwargs={"channels": 48, "depth": 3},
                       steps=120, batch_size=64, lr=3e-3, ema_decay=0.9, progress=False)
with torch.no_grad():
    out = sample_first_hitting(res.ema, proc, (4, 24), generator=torch.Generator().manual_seed(0))
first, last = sum(res.losses[:10]) / 10, sum(res.losses[-10:]) / 10
print(f"NELBO/token: first 10 steps {first:.3f}, last 10 steps {last:.3f}; source entropy/token {src.entropy(24) / 24:.3f}")
print("\\n".join(src.decode(out.x)))"""),
]

nb = nbf.v4.new_notebook()
nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
Path(__file__).with_name("discrete.ipynb").write_text(nbf.writes(nb))

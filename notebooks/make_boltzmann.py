"""Writes notebooks/boltzmann.ipynb (run: python notebooks/make_boltzmann.py)."""

from pathlib import Path

import nbformat as nbf

cells = [
    ("md", """# Boltzmann sampling from an energy alone, with a well-tempered CV bias (WT-ASBS)

A diffusion sampler learns to draw from $\\mu(x) \\propto e^{-E(x)/kT}$ given only $E$ and its
forces: no data. Here on the 2-D double well $E = x_1^4 - 6x_1^2 - \\tfrac12 x_1 + \\tfrac12 x_2^2$ at
$kT = 1$, whose exact answer is known by quadrature: $P(x_1 > 0) = 0.8443$,
$\\Delta F(A \\to B) = -1.690\\,kT$ with $A = \\{x_1 < 0\\}$, $B = \\{x_1 > 0\\}$.

1. **Adjoint Sampling** (Havens et al. 2025): a controlled SDE from a point, trained by adjoint
   matching on a replay buffer, one energy+force call per terminal sample.
2. **Well-tempered rounds** (Nam et al. 2025): deposit Gaussian hills on the CV $x_1$ at the
   sampler's own samples, retrain on $e^{-(E+V)/kT}$, repeat; freeze; reweight.
3. Two kinds of importance weights back to Boltzmann: $e^{V/kT}$ (exact if the sampler matched the
   biased target) and the sampler's path weights (exact for any network, by Girsanov)."""),
    ("code", """import math, tempfile, pathlib
import torch
from sciffusion.domains.boltzmann import DoubleWell2D, WellTemperedBias, AdjointSampler, run_wtasbs, sample_unbiased
from sciffusion.domains.boltzmann.free_energy import delta_f, delta_f_from_grid

energy = DoubleWell2D(kT=1.0)
exact_p, exact_df = energy.exact_probability(0.0), energy.exact_delta_f(0.0)
x1 = lambda x: x[:, :1]   # the collective variable
fit = dict(samples_per_iteration=256, gradient_steps=20, batch_size=256)
def sampler(seed=0):      # the core's VE process and MLP underneath; sizes are small on purpose
    return AdjointSampler((2,), sigma_max=3.0, num_steps=50, hidden=64, depth=2, lr=2e-3, max_adjoint_norm=10.0, seed=seed)
print(f"exact: P(x1>0) = {exact_p:.4f}, dF = {exact_df:.3f} kT")"""),
    ("md", "## 1. The unbiased sampler\n\nIt may sit mostly in one well; its raw samples are not Boltzmann-distributed."),
    ("code", """g = torch.Generator().manual_seed(0)
plain = sample_unbiased(energy, x1, sampler(), iterations=68, num_samples=3000, generator=g, fit_kwargs=fit, path_weights=True)
raw = float((plain.cv[:, 0] > 0).double().mean())
w = torch.softmax(plain.path_log_weights, 0)
print(f"raw P(x1>0) = {raw:.3f}; path-weighted {float((w * (plain.cv[:, 0] > 0)).sum()):.3f} "
      f"(ESS {plain.path_ess:.0f} of 3000); {plain.energy_evaluations} energy calls")"""),
    ("md", "## 2. Well-tempered rounds, checkpointed every round"),
    ("code", """tmp = pathlib.Path(tempfile.mkdtemp())
bias = WellTemperedBias(1, lower=-3.5, upper=3.5, bins=141, sigma=0.3, height=0.02, gamma=6.0)
res = run_wtasbs(energy, x1, bias, sampler(), rounds=4, iterations_per_round=12, final_iterations=20,
                 deposit_samples=200, num_samples=3000, generator=torch.Generator().manual_seed(0),
                 fit_kwargs=fit, path_weights=True, checkpoint=tmp / "wt.pt")
for h in res.history:
    print(h)
print(f"raw P(x1>0) under the bias: {float((res.cv[:, 0] > 0).double().mean()):.3f}")"""),
    ("md", """## 3. Reweighting and free energies

`delta_f` gives $\\Delta F$ with a bootstrap error bar; the ESS-derived standard error of a
self-normalised probability is $\\sqrt{p(1-p)/\\mathrm{ESS}}$."""),
    ("code", """for name, lw, ess in (("bias weights exp(V/kT)", res.log_weights, res.ess), ("path weights", res.path_log_weights, res.path_ess)):
    d = delta_f(res.cv, lw, "A = rest", "B: 0 < x1 < 10", names=["x1"], n_bootstrap=200, generator=torch.Generator().manual_seed(1))
    se = math.sqrt(exact_p * (1 - exact_p) / ess)
    print(f"{name:24s} P(B) = {d['p_b']:.3f} (exact {exact_p:.3f}, ESS-derived s.e. {se:.3f}); "
          f"dF = {d['delta_f']:.3f} +- {d['stderr']:.3f} kT (exact {exact_df:.3f}); ESS {ess:.0f}")
pts, F = bias.free_energy()
print("bias grid's own dF:", round(float(delta_f_from_grid(pts, F, "A = rest", "B: 0 < x1 < 10", names=["x1"])["delta_f"]), 3), "kT")"""),
    ("md", "The path weights are exact whatever the network; the bias weights are exact only when the sampler matches the biased target, which a short run does not quite do."),
    ("code", """import matplotlib.pyplot as plt
grid = torch.linspace(-3, 3, 400, dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
ax = axes[0]
ax.hist(res.cv[:, 0], bins=80, range=(-3, 3), density=True, alpha=0.3, label="raw (biased)")
ax.hist(res.cv[:, 0], bins=80, range=(-3, 3), density=True, histtype="step", weights=torch.softmax(res.path_log_weights, 0), label="path-reweighted")
ax.hist(res.cv[:, 0], bins=80, range=(-3, 3), density=True, histtype="step", weights=torch.softmax(res.log_weights, 0), label="bias-reweighted")
ax.plot(grid, energy.exact_x1_density(grid), "k", lw=1, label="exact")
ax.set_xlabel("x1"); ax.legend(fontsize=7)
ax = axes[1]
fx = -torch.log(energy.exact_x1_density(grid)); fx -= fx.min()
ax.plot(grid, fx, "k", lw=1, label="exact F(x1)")
ax.plot(pts[0], F, label="bias grid: -gamma/(gamma-1) V")
ax.set_ylim(0, 12); ax.set_xlabel("x1"); ax.set_ylabel("kT"); ax.legend(fontsize=7)
fig.tight_layout()"""),
    ("md", "## 4. Resume\n\nThe checkpoint holds the sampler, buffer, bias and generator after the last round; the same call resumes and reproduces the run. A changed setting is refused by name."),
    ("code", """bias2 = WellTemperedBias(1, lower=-3.5, upper=3.5, bins=141, sigma=0.3, height=0.02, gamma=6.0)
again = run_wtasbs(energy, x1, bias2, sampler(), rounds=4, iterations_per_round=12, final_iterations=20,
                   deposit_samples=200, num_samples=3000, generator=torch.Generator().manual_seed(0),
                   fit_kwargs=fit, path_weights=True, checkpoint=tmp / "wt.pt")
print("identical samples after resume:", torch.equal(again.x, res.x))
try:
    run_wtasbs(energy, x1, WellTemperedBias(1, lower=-3.5, upper=3.5, bins=141, sigma=0.3, height=0.02, gamma=6.0),
               sampler(), rounds=5, iterations_per_round=12, final_iterations=20, deposit_samples=200, num_samples=3000,
               generator=torch.Generator().manual_seed(0), fit_kwargs=fit, checkpoint=tmp / "wt.pt")
except ValueError as err:
    print("refused:", str(err)[:160])"""),
]

nb = nbf.v4.new_notebook()
nb["cells"] = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("boltzmann.ipynb"))

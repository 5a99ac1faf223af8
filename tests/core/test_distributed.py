"""sciffusion.distributed on 2 gloo processes on CPU, spawned by the test itself.

One launch (2 processes, torchrun's environment variables, a free port, a 60 s collective
timeout and a 240 s process timeout, so nothing hangs) runs every scenario; each rank saves
what it saw, and the tests compare that with single-process runs made here:

* DDP ``fit``: 3 steps on 2 ranks x 8 rows equal 3 steps of single-process ``fit`` on the 16
  concatenated rows (float64; to 1e-12: DDP sums two half-gradients where one process sums 16
  rows at once, so only the order of additions differs);
* a 2-rank run checkpointed at step 3 and resumed to step 6 ends bit-identical (torch.equal) to
  the uninterrupted 6-step run;
* sharded sampling of an exact Gaussian, and FKC SMC on an annealed exact Gaussian: the sets
  gathered from 2 ranks are bit-identical to the single-process sets;
* bad input fails on both ranks with a clear error, and the group stays usable afterwards.

Run as a script (``python test_distributed.py OUT``) this file is the worker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sciffusion import distributed
from sciffusion.distributed import chunk_generator, derive_seed, fkc_sharded, sample_sharded, shard_indices
from sciffusion.processes import VP
from sciffusion.samplers import sample
from sciffusion.testing import GaussianMixture
from sciffusion.training import fit

WORLD = 2
SEED = 11


# ------------------------------------------------------------------ scenarios (shared with the worker)


def _regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, dtype=torch.float64, generator=g)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.1 * torch.randn(64, 1, generator=g,
                                                                                             dtype=torch.float64)
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1).double(), (X, y)


def _mse(m, batch, g):
    X, y = batch
    return (m(X) - y).pow(2).mean()


_FIT_KW = dict(lr=0.05, ema_decay=0.5, grad_clip=0.05, seed=7, progress=False)  # the clip binds


def _dsm():
    from sciffusion.losses import dsm_loss
    from sciffusion.nn import MLP

    torch.manual_seed(1)
    model = MLP(2, hidden=8, depth=1).double()
    data = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return model, data, (lambda m, x, g: dsm_loss(m, x, VP(), generator=g))


def _gauss():
    law = GaussianMixture.gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    return law, law.denoiser(VP())


def _draw(n, g):
    den = _gauss()[1]
    return sample(den, (n, 2), sampler="euler_maruyama", num_steps=12, generator=g, dtype=torch.float64)


def _fkc_target():
    from sciffusion.domains.feynman_kac import anneal

    return anneal(_gauss()[1], 2.0)


_FKC_KW = dict(num_steps=6, threshold=0.9, dtype=torch.float64, warn_ess=None)


def _discrete(n, g):
    from sciffusion.domains.discrete import MaskedProcess, sample_ancestral

    logits = torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))
    return sample_ancestral(lambda x: logits.expand(*x.shape, 3), MaskedProcess(3), (n, 4), num_steps=4,
                            generator=g)


def _fkc_fields(res):
    return {k: getattr(res, k) for k in ("x", "log_w", "log_z", "ess", "min_ess", "num_resampled",
                                         "lineages", "resample_steps", "nfe")}


def _catch(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 (recorded for the test)
        return f"{type(e).__name__}: {e}"
    return None


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    r, R = distributed.init("gloo", timeout=60)
    got = {"rank": r, "world": R}

    # DDP fit: record every batch this rank drew
    model, data = _regression()
    seen = []
    res = fit(model, lambda m, b, g: (seen.append(b), _mse(m, b, g))[1], data, steps=3, batch_size=8, **_FIT_KW)
    got["ddp"] = dict(batches=seen, model=res.model.state_dict(), ema=res.ema.state_dict(), losses=res.losses)

    # resume: uninterrupted 6 steps vs 3 steps + checkpoint + resume to 6
    model, data, loss = _dsm()
    full = fit(model, loss, data, steps=6, batch_size=4, seed=3, progress=False)
    ck = out / "fit.pt"
    model, data, loss = _dsm()
    fit(model, loss, data, steps=3, batch_size=4, seed=3, progress=False, checkpoint=ck, checkpoint_every=2)
    model, data, loss = _dsm()
    calls = []
    resumed = fit(model, lambda m, x, g: (calls.append(1), loss(m, x, g))[1], data, steps=6, batch_size=4, seed=3,
                  progress=False, checkpoint=ck)
    got["resume"] = dict(full=(full.model.state_dict(), full.ema.state_dict(), full.losses),
                         resumed=(resumed.model.state_dict(), resumed.ema.state_dict(), resumed.losses),
                         resumed_steps=len(calls))

    # a fit on rank 0 alone inside the group (local_only): no collective, the one-process result
    if r == 0:
        with distributed.local_only():
            model, data = _regression()
            got["local_fit"] = fit(model, _mse, data, steps=2, batch_size=8, **_FIT_KW).model.state_dict()

    # sharded sampling, gathered three ways
    got["sample"] = sample_sharded(_draw, 10, seed=SEED, chunk_size=3, out=out / "samples")
    got["sample_all"] = sample_sharded(_draw, 10, seed=SEED, chunk_size=3, gather="all")
    got["sample_local"] = sample_sharded(_draw, 10, seed=SEED, chunk_size=3, gather=None)
    got["discrete"] = sample_sharded(_discrete, 6, seed=SEED, chunk_size=2)

    # FKC, whole groups per rank
    from sciffusion.domains.feynman_kac import sample_fkc

    res = fkc_sharded(sample_fkc, _fkc_target(), (4, 2), num_particles=8, seed=SEED, **_FKC_KW)
    got["fkc"] = None if res is None else _fkc_fields(res)

    # bad input: every rank must raise
    model, data = _regression()
    got["err_groups"] = _catch(lambda: fkc_sharded(sample_fkc, _fkc_target(), (3, 2), num_particles=4, seed=SEED,
                                                   **_FKC_KW))
    got["err_empty"] = _catch(lambda: fit(model, _mse, (data[0][:1], data[1][:1]), steps=2, **_FIT_KW))
    got["err_rank_empty"] = _catch(lambda: fit(model, _mse, data if r == 0 else (data[0][:0], data[1][:0]), steps=2,
                                               **_FIT_KW))
    got["err_lr"] = _catch(lambda: fit(model, _mse, data, steps=2, **{**_FIT_KW, "lr": 0.05 * (1 + r)}))
    got["err_n"] = _catch(lambda: sample_sharded(_draw, 10 + r, seed=SEED, chunk_size=3))
    got["err_few"] = _catch(lambda: sample_sharded(_draw, 2, seed=SEED, chunk_size=3))

    def flaky(n, g):
        if r == 1:
            raise FloatingPointError("simulated NaN on rank 1")
        return _draw(n, g)

    got["err_flaky"] = _catch(lambda: sample_sharded(flaky, 10, seed=SEED, chunk_size=3))
    distributed.barrier()  # the group is still usable after every error above
    got["finished"] = True
    torch.save(got, out / f"rank{r}.pt")
    distributed.shutdown()


# ------------------------------------------------------------------ the launch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(WORLD),
           "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: containers whose hostname does not resolve
    procs = [subprocess.Popen([sys.executable, __file__, str(out)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, logs):
        assert p.returncode == 0, f"worker failed ({p.returncode}):\n{text[-4000:]}"
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so float results can be compared bit for bit
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ the tests


def test_one_process_has_no_hook():
    """Without a process group fit takes its unchanged path (the hook is None)."""
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.fit_hook(model=torch.nn.Linear(1, 1), data=torch.zeros(4, 1), batch_size=2, seed=0) is None


def test_one_process_fit_touches_no_collective(monkeypatch, tmp_path):
    """With one process fit never reaches torch.distributed or DDP (every entry point is made to
    raise), so it runs the code it ran before the hook; a checkpointed run still resumes bit for bit."""
    import torch.distributed as dist

    def boom(*a, **k):
        raise AssertionError("a collective was called on one process")

    for name in ("all_gather_object", "gather_object", "all_reduce", "barrier", "init_process_group"):
        monkeypatch.setattr(dist, name, boom)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", boom)
    model, data, loss = _dsm()
    ref = fit(model, loss, data, steps=6, batch_size=4, seed=3, progress=False)
    model, data, loss = _dsm()
    fit(model, loss, data, steps=3, batch_size=4, seed=3, progress=False, checkpoint=tmp_path / "a.pt")
    model, data, loss = _dsm()
    res = fit(model, loss, data, steps=6, batch_size=4, seed=3, progress=False, checkpoint=tmp_path / "a.pt")
    assert res.losses == ref.losses and all(torch.equal(res.model.state_dict()[k], v)
                                            for k, v in ref.model.state_dict().items())


def test_seeds_and_shards_are_disjoint_and_reproducible():
    """derive_seed is a pure function whose streams differ by key; the data shards of 2 (and 3)
    ranks are disjoint, cover every row once, and depend on the seed only."""
    assert derive_seed(3, 1, 0) == derive_seed(3, 1, 0) != derive_seed(3, 1, 1) != derive_seed(4, 1, 0)
    for R in (2, 3):
        parts = [shard_indices(10, r, R, seed=5) for r in range(R)]
        assert sorted(torch.cat(parts).tolist()) == list(range(10))
        assert all(torch.equal(p, shard_indices(10, r, R, seed=5)) for r, p in enumerate(parts))
    assert not torch.equal(shard_indices(10, 0, 2, seed=5), shard_indices(10, 0, 2, seed=6))
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        derive_seed(-1)


def test_ddp_step_equals_one_process_on_the_concatenated_batch(ranks):
    """3 DDP steps on 2 ranks x 8 rows == 3 single-process steps on the 16 concatenated rows:
    parameters, EMA and the logged (rank-averaged) loss, to 1e-12 (float64; only the order of
    the gradient sums differs). The clip (0.05) binds, so clipping acts on the averaged gradient."""
    _, (r0, r1) = ranks
    b0, b1 = r0["ddp"]["batches"], r1["ddp"]["batches"]
    assert len(b0) == len(b1) == 3 and all(b[0].shape == (8, 3) for b in b0 + b1)
    rows0 = {tuple(x.tolist()) for b in b0 for x in b[0]}
    rows1 = {tuple(x.tolist()) for b in b1 for x in b[0]}
    assert not rows0 & rows1  # the shards are disjoint
    concat = [tuple(torch.cat([u, v]) for u, v in zip(a, b)) for a, b in zip(b0, b1)]
    calls = iter(concat)
    model, _ = _regression()
    ref = fit(model, _mse, lambda n, g: next(calls), steps=3, batch_size=16, **_FIT_KW)
    for rr in (r0, r1):
        for name, p in ref.model.state_dict().items():
            torch.testing.assert_close(rr["ddp"]["model"][name], p, rtol=0, atol=1e-12)
            torch.testing.assert_close(rr["ddp"]["ema"][name], ref.ema.state_dict()[name], rtol=0, atol=1e-12)
        assert rr["ddp"]["losses"] == pytest.approx(ref.losses, rel=1e-12)
    start = _regression()[0].weight
    assert not torch.allclose(ref.model.weight, start)  # it trained


def test_local_only_fit_on_one_rank_is_the_one_process_fit(ranks, one_thread):
    """Inside local_only, rank 0 trains alone (rank 1 does not join) and gets exactly the
    single-process result."""
    _, (r0, r1) = ranks
    model, data = _regression()
    ref = fit(model, _mse, data, steps=2, batch_size=8, **_FIT_KW).model.state_dict()
    assert "local_fit" not in r1 and all(torch.equal(r0["local_fit"][k], ref[k]) for k in ref)


def test_resumed_two_rank_run_is_bit_identical(ranks):
    """Checkpoint at step 3 (written by rank 0), resume to 6 on both ranks (3 steps taken, not 6):
    model, EMA and losses equal the uninterrupted run's exactly; both ranks hold the same model."""
    out, (r0, r1) = ranks
    for rr in (r0, r1):
        (mf, ef, lf), (mr, er, lr) = rr["resume"]["full"], rr["resume"]["resumed"]
        assert all(torch.equal(mf[k], mr[k]) and torch.equal(ef[k], er[k]) for k in mf)
        assert lf == lr and len(lf) == 6
        assert rr["resume"]["resumed_steps"] == 3  # it resumed at step 3 rather than retraining
    assert all(torch.equal(r0["resume"]["full"][0][k], r1["resume"]["full"][0][k]) for k in r0["resume"]["full"][0])
    state = torch.load(out / "fit.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["generator"]) == 2 and state["step"] == 6
    assert not (out / "fit.pt.tmp").exists()


def test_two_rank_checkpoint_refuses_a_one_process_resume(ranks):
    """The checkpoint records the world size: a single process refuses it, naming world_size."""
    out, _ = ranks
    model, data, loss = _dsm()
    with pytest.raises(ValueError, match="world_size"):
        fit(model, loss, data, steps=8, batch_size=4, seed=3, progress=False, checkpoint=out / "fit.pt")


def test_sharded_sampling_is_the_same_set_on_one_and_two_ranks(ranks, one_thread):
    """10 Euler-Maruyama samples of an exact Gaussian in chunks of 3: the set gathered from 2 ranks
    (to rank 0, or to all) is bit-identical to one process's, chunk c is fn(3, chunk_generator(seed, c)),
    and the per-rank blocks and files are rows 0-5 and 6-9."""
    out, (r0, r1) = ranks
    ref = sample_sharded(_draw, 10, seed=SEED, chunk_size=3)
    assert ref.shape == (10, 2) and torch.equal(r0["sample"], ref) and r1["sample"] is None
    assert torch.equal(r0["sample_all"], ref) and torch.equal(r1["sample_all"], ref)
    assert torch.equal(ref[6:9], _draw(3, chunk_generator(SEED, 2)))
    assert torch.equal(r0["sample_local"], ref[:6]) and torch.equal(r1["sample_local"], ref[6:])
    f1 = torch.load(out / "samples" / "samples_rank00001.pt", weights_only=False)
    assert f1["rows"] == (6, 10) and torch.equal(f1["samples"], ref[6:])
    assert len({tuple(x.tolist()) for x in ref}) == 10  # no chunk repeats another's noise


def test_sharded_discrete_sampler_is_the_same_set(ranks):
    """A discrete sampler's result (a dataclass) is merged field by field: tokens and per-sequence
    NFE concatenated, the batched NFE summed; equal to one process's (integer tokens, exact)."""
    _, (r0, _) = ranks
    ref = sample_sharded(_discrete, 6, seed=SEED, chunk_size=2)
    got = r0["discrete"]
    assert torch.equal(got.x, ref.x) and torch.equal(got.nfe_per_sequence, ref.nfe_per_sequence)
    assert got.nfe == ref.nfe and got.x.shape == (6, 4) and (got.x < 3).all()


def test_sharded_fkc_matches_one_process(ranks, one_thread):
    """FKC on an annealed exact Gaussian, 4 groups x 8 particles, 2 groups per rank: particles,
    log-weights and log Z gathered from 2 ranks equal one process's bit for bit; the diagnostics
    that average over groups (ESS, lineages) to 1e-12 (a weighted mean of chunk means); group 3
    is sample_fkc on its own with chunk 3's generator."""
    from sciffusion.domains.feynman_kac import sample_fkc

    _, (r0, r1) = ranks
    ref = fkc_sharded(sample_fkc, _fkc_target(), (4, 2), num_particles=8, seed=SEED, **_FKC_KW)
    got = r0["fkc"]
    assert r1["fkc"] is None and ref.x.shape == (32, 2) and ref.log_w.shape == (4, 8)
    for k in ("x", "log_w", "log_z", "min_ess", "num_resampled"):
        assert torch.equal(got[k], getattr(ref, k)), k
    for k in ("ess", "lineages"):
        torch.testing.assert_close(got[k], getattr(ref, k), rtol=1e-12, atol=0)
    assert got["resample_steps"] == ref.resample_steps and got["nfe"] == ref.nfe
    alone = sample_fkc(_fkc_target(), (1, 2), num_particles=8, generator=chunk_generator(SEED, 3), **_FKC_KW)
    assert torch.equal(ref.x[24:], alone.x) and torch.equal(ref.log_w[3:], alone.log_w)
    assert sum(ref.num_resampled.tolist()) > 0  # resampling happened (within groups)


def test_bad_input_fails_on_every_rank(ranks):
    """A world size that does not divide the SMC chunks, an empty data shard (1 row for 2 ranks, or
    one rank given no rows), a setting that differs across ranks, too few chunks for the ranks, and
    a sampler failing on one rank: each raises on both ranks with a message naming the problem, and
    the group survives (barrier)."""
    _, (r0, r1) = ranks
    for rr in (r0, r1):
        assert rr["finished"]
        assert rr["err_groups"].startswith("ValueError") and "world size 2 does not divide" in rr["err_groups"]
        assert rr["err_empty"].startswith("ValueError") and "empty shard" in rr["err_empty"]
        assert rr["err_rank_empty"].startswith("ValueError") and "differ across ranks: data" in rr["err_rank_empty"]
        assert rr["err_lr"].startswith("ValueError") and "settings differ across ranks: lr" in rr["err_lr"]
        assert rr["err_n"].startswith("ValueError") and "num_samples" in rr["err_n"]
        assert rr["err_few"].startswith("ValueError") and "would draw nothing" in rr["err_few"]
    assert r1["err_flaky"] == "FloatingPointError: simulated NaN on rank 1"
    assert r0["err_flaky"].startswith("RuntimeError") and "rank 1: FloatingPointError" in r0["err_flaky"]


def test_init_without_torchrun_environment(monkeypatch):
    """WORLD_SIZE unset or 1 is one process (no group); WORLD_SIZE=2 without RANK/MASTER_* names them."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init() == (0, 1) and distributed.world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="RANK, MASTER_ADDR, MASTER_PORT not set: launch with torchrun"):
        distributed.init()


def test_single_process_input_errors():
    """Validation that needs no group: fkc_sharded refuses a generator, gather must be a known name."""
    with pytest.raises(TypeError, match="generator"):
        fkc_sharded(lambda *a, **k: None, None, (2, 1), num_particles=2, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="gather"):
        sample_sharded(_draw, 4, seed=0, gather="rank1")
    with pytest.raises(ValueError, match="chunk_size"):
        sample_sharded(_draw, 4, seed=0, chunk_size=0)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))

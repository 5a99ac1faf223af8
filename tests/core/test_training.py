"""fit(): it learns, its EMA is the stated recursion, and a checkpointed run resumes bit for bit."""

import math

import pytest
import torch

import sciffusion.training as training
from sciffusion.losses import dsm_loss
from sciffusion.nn import MLP
from sciffusion.processes import VP
from sciffusion.training import fit


def _regression_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    return X, X @ w + 0.3, w


def _mse(model, batch, generator):
    X, y = batch
    return (model(X) - y).pow(2).mean()


def test_fit_learns_a_linear_regression():
    """Noise-free linear data: Adam drives the loss from O(1) to < 1e-4 and recovers the exact
    least-squares weights to 1e-2 (lr 0.05, 600 steps; the minimum is 0)."""
    X, y, w = _regression_data()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    res = fit(model, _mse, (X, y), steps=600, batch_size=64, lr=0.05, ema_decay=0.9, progress=False)
    assert len(res.losses) == 600 and res.step == 600
    assert res.losses[0] > 1.0 and sum(res.losses[-20:]) / 20 < 1e-4
    torch.testing.assert_close(res.model.weight.detach().T, w, atol=1e-2, rtol=0)
    assert abs(res.model.bias.item() - 0.3) < 1e-2


def _dsm_setup():
    torch.manual_seed(1)
    model = MLP(2, hidden=16, depth=1).double()
    data = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    loss = lambda m, x, g: dsm_loss(m, x, VP(), generator=g)  # noqa: E731 (draws noise from g)
    return model, data, loss


def test_checkpoint_resume_is_bit_identical(tmp_path):
    """A run that crashes at step 27 and resumes from its step-20 checkpoint ends with exactly the
    parameters, EMA and loss history of the uninterrupted 40-step run (torch.equal, no tolerance):
    model, EMA, Adam moments and the generator (batch order and DSM noise) are all restored."""
    model, data, loss = _dsm_setup()
    ref = fit(model, loss, data, steps=40, batch_size=32, seed=3, progress=False)

    calls = {"n": 0}

    def crashing(m, x, g):
        calls["n"] += 1
        if calls["n"] == 28:
            raise KeyboardInterrupt("simulated crash")
        return loss(m, x, g)

    ck = tmp_path / "ck.pt"
    model2, _, _ = _dsm_setup()
    with pytest.raises(KeyboardInterrupt):
        fit(model2, crashing, data, steps=40, batch_size=32, seed=3, progress=False, checkpoint=ck,
            checkpoint_every=10)
    assert torch.load(ck, weights_only=False)["step"] == 20
    model3, _, _ = _dsm_setup()
    res = fit(model3, loss, data, steps=40, batch_size=32, seed=3, progress=False, checkpoint=ck,
              checkpoint_every=10)
    assert res.step == 40 and res.losses == ref.losses
    for a, b in zip(res.model.state_dict().values(), ref.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(res.ema.state_dict().values(), ref.ema.state_dict().values()):
        assert torch.equal(a, b)
    # a finished checkpoint resumed with the same step count does nothing more
    again = fit(_dsm_setup()[0], loss, data, steps=40, batch_size=32, seed=3, progress=False, checkpoint=ck)
    assert again.losses == ref.losses


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing a checkpoint leaves the previous one whole and loadable."""
    model, data, loss = _dsm_setup()
    ck = tmp_path / "ck.pt"
    fit(model, loss, data, steps=5, batch_size=32, progress=False, checkpoint=ck)
    before = torch.load(ck, weights_only=False)
    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(training.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fit(model, loss, data, steps=10, batch_size=32, progress=False, checkpoint=ck, checkpoint_every=1)
    monkeypatch.setattr(training.torch, "save", real_save)
    after = torch.load(ck, weights_only=False)
    assert after["step"] == before["step"] == 5
    for a, b in zip(after["model"].values(), before["model"].values()):
        assert torch.equal(a, b)


def test_ema_is_the_stated_recursion():
    """EMA after n updates = d^n theta_0 + (1-d) sum_k d^(n-k) theta_k (theta_k after update k),
    recomputed from the recorded iterates to 1e-12."""
    X, y, _ = _regression_data()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    iterates = []

    def recording(m, batch, g):
        iterates.append(torch.cat([p.detach().flatten() for p in m.parameters()]).clone())
        return _mse(m, batch, g)

    d, n = 0.8, 12
    res = fit(model, recording, (X, y), steps=n, batch_size=16, ema_decay=d, progress=False, lr=0.1)
    iterates.append(torch.cat([p.detach().flatten() for p in res.model.parameters()]))
    expected = d ** n * iterates[0] + (1 - d) * sum(d ** (n - k) * iterates[k] for k in range(1, n + 1))
    got = torch.cat([p.flatten() for p in res.ema.parameters()])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_grad_clip_bounds_the_first_step():
    """Clipping is checked on the gradient itself (Adam's update is nearly scale-free, so the
    parameters cannot show it): the gradient norm the optimizer sees is <= grad_clip, although
    the 100x-scaled loss's raw gradient is far larger."""
    X, y, _ = _regression_data()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    norms = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters())))
        return real_step(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        fit(model, lambda m, b, g: 100 * _mse(m, b, g), (X, y), steps=3, grad_clip=0.5, progress=False)
    finally:
        torch.optim.AdamW.step = real_step
    assert len(norms) == 3 and max(norms) <= 0.5 + 1e-9


def test_callable_data_and_seeded_order():
    """Data drawn by a callable with the fit generator: same seed -> same losses, other seed differs."""
    draw = lambda bs, g: torch.randn(bs, 3, generator=g, dtype=torch.float64)  # noqa: E731

    def run(seed):
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 3).double()
        return fit(m, lambda mm, x, g: (mm(x) - x).pow(2).mean(), draw, steps=5, batch_size=8, seed=seed,
                   progress=False).losses

    assert run(1) == run(1) and run(1) != run(2)


def test_errors():
    X, y, _ = _regression_data()
    model = torch.nn.Linear(3, 1).double()
    with pytest.raises(TypeError, match="nn.Module"):
        fit(lambda x: x, _mse, (X, y), steps=1)
    with pytest.raises(ValueError, match="steps"):
        fit(model, _mse, (X, y), steps=-1)
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, _mse, (X, y), steps=1, batch_size=0)
    with pytest.raises(ValueError, match="ema_decay"):
        fit(model, _mse, (X, y), steps=1, ema_decay=1.0)
    with pytest.raises(ValueError, match="same number of rows"):
        fit(model, _mse, (X, y[:5]), steps=1)
    with pytest.raises(ValueError, match="no rows"):
        fit(model, _mse, (X[:0], y[:0]), steps=1)
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(model, lambda m, b, g: torch.tensor(float("nan"), requires_grad=True), (X, y), steps=2,
            progress=False)


def test_losses_are_read_back_only_at_logging_steps(tmp_path):
    """No step waits on the device for its loss: fit reads the losses back (one tolist) at the
    logging steps (every log_every), before each checkpoint and at the end, never by .item() or
    bool() per step (counted with a TorchFunctionMode, calls made from training.py only). The
    loss history is the same list as with a read every step; a NaN at step 7 is reported as
    step 7 at the next read, and the checkpoint on disk is the last one written before it."""
    import sys

    from torch.overrides import TorchFunctionMode

    class Reads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in ("item", "tolist", "__bool__", "__float__") and \
                    sys._getframe(1).f_code.co_filename == training.__file__:
                self.calls.append(name)
            return func(*args, **(kwargs or {}))

    import copy

    X, y, _ = _regression_data()
    init = torch.nn.Linear(3, 1).double()
    runs = {}
    for every in (1, 50):
        reads = Reads()
        with reads:
            runs[every] = fit(copy.deepcopy(init), _mse, (X, y), steps=120, batch_size=32,
                              seed=3, progress=False, log_every=every).losses
        if every == 50:  # steps 0, 50, 100, the end; plus the data's NaN check (one bool per tensor)
            assert reads.calls.count("tolist") == 4 and reads.calls.count("item") == 0, reads.calls
            assert reads.calls.count("__bool__") == 2, reads.calls
    assert len(runs[50]) == 120 and runs[50] == runs[1]

    def nan_at_7(model, batch, generator):
        loss = _mse(model, batch, generator)
        nan_at_7.n += 1
        return loss * float("nan") if nan_at_7.n == 8 else loss

    nan_at_7.n = 0
    ck = tmp_path / "ck.pt"
    with pytest.raises(FloatingPointError, match=r"step 7; the checkpoint keeps step 5"):
        fit(torch.nn.Linear(3, 1).double(), nan_at_7, (X, y), steps=20, progress=False, log_every=10,
            checkpoint=ck, checkpoint_every=5)
    assert torch.load(ck, weights_only=False)["step"] == 5
    with pytest.raises(ValueError, match="log_every"):
        fit(torch.nn.Linear(3, 1).double(), _mse, (X, y), steps=1, log_every=0)


def test_capped_ema_decay_bounds_the_share_of_the_random_init():
    """d^steps of the initial weights stays in the EMA: the cap 1 - 10/steps keeps it below e^-10."""
    import math

    from sciffusion.training import capped_ema_decay

    assert capped_ema_decay(1500) == 1.0 - 10.0 / 1500 and capped_ema_decay(1500) ** 1500 < math.exp(-10)
    assert capped_ema_decay(10000) == 0.999 and capped_ema_decay(20, 0.9) == 0.5 and capped_ema_decay(5) == 0.0

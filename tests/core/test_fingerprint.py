"""fingerprint / check_resume: equal settings agree, every kind of change is caught and named,
and ``fit`` refuses to resume a checkpoint written for other data, another model or other
hyper-parameters (the stale-resume bug of issue 12)."""

import numpy as np
import pytest
import torch

from sciffusion.losses import dsm_loss
from sciffusion.nn import MLP
from sciffusion.processes import VE, VP
from sciffusion.training import fit
from sciffusion.utils import check_resume, fingerprint


def test_equal_settings_give_equal_fingerprints():
    a = fingerprint(x=torch.arange(6.0).reshape(2, 3), lr=1e-3, p=VP(), m=MLP(2, hidden=8, depth=1),
                    arr=np.ones(3), names=["a", "b"], none=None)
    b = fingerprint(x=torch.arange(6.0).reshape(2, 3), lr=1e-3, p=VP(), m=MLP(2, hidden=8, depth=1),
                    arr=np.ones(3), names=["a", "b"], none=None)
    assert a == b
    check_resume(a, b)  # no error


@pytest.mark.parametrize("name, other", [
    ("x", torch.arange(6.0).reshape(3, 2)),      # same bytes, other shape
    ("x", torch.arange(6.0).reshape(2, 3) + 1e-7),  # one ulp-scale change in the data
    ("x", torch.arange(6, dtype=torch.float64).reshape(2, 3)),  # other dtype
    ("lr", 1e-3 * (1 + 1e-15)),
    ("p", VP(beta_max=19.0)),
    ("p", VE()),
    ("m", MLP(2, hidden=9, depth=1)),
    ("arr", np.ones(4)),
    ("names", ["a", "c"]),
])
def test_each_change_is_named(name, other):
    base = dict(x=torch.arange(6.0).reshape(2, 3), lr=1e-3, p=VP(), m=MLP(2, hidden=8, depth=1),
                arr=np.ones(3), names=["a", "b"])
    changed = dict(base, **{name: other})
    with pytest.raises(ValueError, match=rf"different settings: {name}\b"):
        check_resume(fingerprint(**base), fingerprint(**changed), what="run")


def test_short_values_are_shown_and_missing_fingerprint_refused():
    with pytest.raises(ValueError, match=r"lr \(saved 0.001, now 0.003\)"):
        check_resume(fingerprint(lr=1e-3), fingerprint(lr=3e-3))
    with pytest.raises(ValueError, match="no settings fingerprint"):
        check_resume(None, fingerprint(lr=1e-3))
    with pytest.raises(ValueError, match=r"new \(saved <absent>"):
        check_resume(fingerprint(lr=1e-3), fingerprint(lr=1e-3, new=1))


def test_functions_are_fingerprinted_by_code_and_closure():
    def make(c):
        return lambda x: x + c
    assert fingerprint(f=make(1))["f"] == fingerprint(f=make(1))["f"]
    assert fingerprint(f=make(1))["f"] != fingerprint(f=make(2))["f"]
    assert fingerprint(f=lambda x: x + 1)["f"] != fingerprint(f=lambda x: x * 1)["f"]


def _setup(seed=2, n=128):
    torch.manual_seed(1)
    model = MLP(2, hidden=8, depth=1).double()
    data = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return model, data


def _loss(m, x, g):
    return dsm_loss(m, x, VP(), generator=g)


def test_fit_refuses_a_stale_resume(tmp_path):
    """The bug: a second run into the same checkpoint with other data resumed the finished run,
    trained 0 steps and returned the old model. Now every result-changing input is checked."""
    ck = tmp_path / "ck.pt"
    model, data = _setup()
    fit(model, _loss, data, steps=4, batch_size=16, progress=False, checkpoint=ck)
    _, other = _setup(seed=3)
    with pytest.raises(ValueError, match="different settings: data"):
        fit(_setup()[0], _loss, other, steps=4, batch_size=16, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match=r"lr \(saved 0.001, now 0.01\)"):
        fit(_setup()[0], _loss, data, steps=4, batch_size=16, lr=1e-2, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="different settings: model"):
        fit(MLP(2, hidden=9, depth=1).double(), _loss, data, steps=4, batch_size=16, progress=False,
            checkpoint=ck)
    with pytest.raises(ValueError, match="different settings: settings"):
        fit(_setup()[0], _loss, data, steps=4, batch_size=16, progress=False, checkpoint=ck,
            settings={"process": VE()})
    # more steps with the same settings trains on from step 4
    res = fit(_setup()[0], _loss, data, steps=6, batch_size=16, progress=False, checkpoint=ck)
    assert res.step == 6 and len(res.losses) == 6


def test_fit_reports_nan_in_the_data():
    """NaN in the training data used to surface as 'loss became nan ... lower lr'."""
    model, data = _setup()
    data[5, 1] = float("nan")
    with pytest.raises(ValueError, match="data: tensor 0 holds 1 NaN"):
        fit(model, _loss, data, steps=2, progress=False)


def test_mlp_names_an_input_dimension_mismatch():
    """Issue 12: data of another dimension surfaced as a matmul shape error deep in nn.Linear."""
    with pytest.raises(ValueError, match=r"expected \(batch, 2\).*2-dimensional"):
        MLP(2, hidden=8, depth=1)(torch.zeros(4, 3), torch.zeros(4))


def test_expanded_tensors_fingerprint_like_their_dense_copies():
    # stride-0 (expanded) tensors, even of size 1, are hashed by value like a dense copy
    import torch

    from sciffusion.utils import fingerprint

    for t in (torch.tensor(1.5, dtype=torch.float64).expand(1), torch.arange(3.0).expand(4, 3)):
        assert fingerprint(t=t) == fingerprint(t=t.clone(memory_format=torch.contiguous_format).contiguous() + 0)

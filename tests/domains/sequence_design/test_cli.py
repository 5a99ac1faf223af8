"""``sciffusion sequences train|design`` end to end at tiny size; arguments validated before work."""

import pytest
import torch

from sciffusion.cli import main
from sciffusion.domains.sequence_design import DNA, read_fasta, write_fasta
from sciffusion.domains.sequence_design import cli as scli
from sciffusion.domains.sequence_design.decoding import VALUE_SAMPLES


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    x = torch.randint(4, (40, 16), generator=torch.Generator().manual_seed(0))
    write_fasta(d / "data.fa", x)
    rc = main(["sequences", "train", "--fasta", str(d / "data.fa"), "--out", str(d / "model"), "--width", "8",
               "--depth", "2", "--steps", "3", "--batch-size", "8", "--no-progress"])
    assert rc == 0 and (d / "model" / "model.pt").exists()
    return d


@pytest.mark.parametrize("method", ["svdd-pm", "svdd-fh", "svdd-mc", "best-of-n", "smc", "base"])
def test_design_methods_write_fasta(trained, method):
    out = trained / f"{method}.fasta"
    rc = main(["sequences", "design", "--model", str(trained / "model"), "--reward", "gc:0.5,hamming:ACGT:1",
               "--method", method, "--num", "3", "--steps", "4", "--candidates", "2", "--rollouts", "16",
               "--out", str(out)])
    x, names = read_fasta(out)
    assert rc == 0 and x.shape == (3, 16) and names == ["design0", "design1", "design2"]
    assert "reward=" in out.read_text().splitlines()[0]


def test_design_svdd_fh_is_the_first_hitting_decoder(trained, capsys):
    """``--method svdd-fh`` runs sample_svdd_first_hitting: the FASTA holds exactly the designs (and
    rewards) of a direct call with the CLI's seed, and the printed model cost is the first-hitting
    one (one step per site: 1 + M (L - 1) sequences per design for L = 16, M = 3, whatever --steps)."""
    from sciffusion.domains.sequence_design import load_base_model, parse_reward, sample_svdd_first_hitting

    out = trained / "fh.fasta"
    rc = main(["sequences", "design", "--model", str(trained / "model"), "--reward", "hamming:ACGT:1",
               "--method", "svdd-fh", "--num", "4", "--steps", "5", "--candidates", "3", "--seed", "7",
               "--out", str(out)])
    assert rc == 0
    assert f"model evals/design {1 + 3 * 15:.1f}" in capsys.readouterr().out
    model, proc, _, alph = load_base_model(trained / "model" / "model.pt")
    ref = sample_svdd_first_hitting(model, proc, parse_reward("hamming:ACGT:1", alph), (4, 16), num_candidates=3,
                                    generator=torch.Generator().manual_seed(7))
    x, _ = read_fasta(out)
    assert torch.equal(x, ref.x)
    rewards = [float(line.split("reward=")[1].split()[0]) for line in out.read_text().splitlines()
               if line.startswith(">")]
    assert rewards == pytest.approx(ref.reward.tolist(), rel=1e-5)  # written with 6 significant digits


def test_bad_arguments_fail_before_output(trained, capsys):
    out = trained / "never.fasta"
    base = ["sequences", "design", "--model", str(trained / "model"), "--num", "2", "--out", str(out)]
    assert main(base + ["--reward", "motif:MA9999"]) == 2
    assert "unknown JASPAR matrix ID 'MA9999'" in capsys.readouterr().err
    assert main(base + ["--reward", "gc:0.5", "--length", "17"]) == 2
    assert "exceeds the model's maximum length 16" in capsys.readouterr().err
    assert main(base + ["--reward", "nope"]) == 2
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(base + ["--reward", "gc", "--candidates", "0"])
    assert main(["sequences", "design", "--model", str(trained / "missing"), "--reward", "gc",
                 "--out", str(out)]) == 2
    bad = trained / "bad.fa"
    bad.write_text(">a\nACGT\n>b\nACGN\n")
    assert main(["sequences", "train", "--fasta", str(bad), "--out", str(trained / "m2")]) == 2
    assert "'b': character 'N' at position 4" in capsys.readouterr().err
    assert not (trained / "m2").exists()


def test_tour_runs_quick(tmp_path):
    """The tour's figures are what its designs give: the SVDD-PM designs written to FASTA, re-scored
    by the tour's reward (windows within Hamming distance 1 of TGACTCA), have exactly the mean reward
    of its row (rounded to 3 decimals there, hence 5e-4); reward costs per design are the exact
    identities 1 (base), N (best-of-N, N = its matched n) and M * steps = 4 * 32 (SVDD-PM scores every
    candidate at every step); best-of-N's N is SVDD-PM's model cost over the base sampler's, rounded."""
    import json

    from sciffusion.domains.sequence_design import HammingMotifCount

    res = scli.tour(tmp_path, quick=True)
    assert res["section"] == "sequence_design" and len(res["rows"]) == 3
    assert json.loads((tmp_path / "sequence_design.json").read_text()) == res["rows"]
    base, sv, bon = res["rows"]
    assert (base["method"], sv["method"], bon["method"]) == ("base", "svdd-pm", "best-of-n")
    x, _ = read_fasta(tmp_path / "svdd_designs.fasta")
    assert x.shape == (32, 32) and set(DNA.decode(x)[0]) <= set("ACGT")
    # the tour rounds to 3 decimals (half a unit of the last place, plus float slack for an exact tie)
    assert abs(float(HammingMotifCount("TGACTCA", 1)(x).mean()) - sv["mean_reward"]) <= 5e-4 + 1e-12
    n = max(1, round(sv["model_evals_per_design"] / base["model_evals_per_design"]))
    assert base["reward_evals_per_design"] == 1 and 4 * 32 < sv["reward_evals_per_design"] <= 4 * 32 * VALUE_SAMPLES
    assert bon["reward_evals_per_design"] == n

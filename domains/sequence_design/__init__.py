"""DNA/RNA design with soft value-based decoding (SVDD, Li et al. 2024) over a masked discrete
diffusion model. Install with ``pip install "sciffusion[sequences]"``.

* :mod:`.alphabet` — DNA/RNA alphabets, tokens, one-hot, FASTA via Biopython (atomic writes);
* :mod:`.rewards` — counted, composable black-box rewards: JASPAR PWM scans, Hamming-ball motif
  counts, GC windows, upstream AUGs, ViennaRNA MFE / structure distance, a CNN oracle;
* :mod:`.decoding` — SVDD-PM, SVDD-MC, soft / argmax selection, best-of-N, SMC reward tilting
  (through ``feynman_kac``), each reporting model and reward cost separately;
* :mod:`.model` — the base model (``discrete`` denoisers and training) and its ELBO;
* :mod:`.metrics` — naturalness beside the reward: 3-mer spectrum and motif-occurrence
  correlation with the data, pairwise Hamming diversity.

Example::

    import torch
    from sciffusion.domains.discrete import MarkovChainOracle, MaskedProcess
    from sciffusion.domains.sequence_design import HammingMotifCount, sample_svdd, sample_best_of_n
    oracle = MarkovChainOracle.random(vocab_size=4, length=12, seed=0)   # any masked model works
    process = MaskedProcess(4)
    reward = HammingMotifCount("ACGT", max_mismatches=1)
    out = sample_svdd(oracle.masked_model(process), process, reward, (64, 12), num_steps=12,
                      num_candidates=8, generator=torch.Generator().manual_seed(0))
    out.reward.mean(), out.model_evals_per_design, out.reward_evals_per_design
"""

from .alphabet import DNA, RNA, Alphabet, decode, encode, get_alphabet, one_hot, read_fasta, reverse_complement, \
    write_fasta
from .decoding import (METHODS, VALUE_SAMPLES, DesignResult, ValueNetwork, denoised, design, fit_value_network,
                       posterior_value, sample_base, sample_best_of_n, sample_smc, sample_svdd,
                       sample_svdd_first_hitting, select_candidates)
from .metrics import kmer_correlation, kmer_spectrum, motif_occurrence_correlation, pairwise_hamming
from .model import elbo, load_base_model, save_base_model, train_base_model
from .rewards import (CNNOracle, Constrained, FunctionReward, GCContent, HammingMotifCount, PWMScore, Reward,
                      RNAFoldEnergy, StructureDistance, UpstreamAUGCount, WeightedSum, as_reward, jaspar_counts,
                      parse_reward)

__all__ = ["DNA", "RNA", "Alphabet", "decode", "encode", "get_alphabet", "one_hot", "read_fasta",
           "reverse_complement", "write_fasta", "METHODS", "DesignResult", "ValueNetwork", "denoised", "design",
           "fit_value_network", "sample_base", "sample_best_of_n", "sample_smc", "sample_svdd",
           "sample_svdd_first_hitting", "select_candidates", "VALUE_SAMPLES", "posterior_value",
           "kmer_correlation", "kmer_spectrum", "motif_occurrence_correlation", "pairwise_hamming", "elbo",
           "load_base_model", "save_base_model", "train_base_model", "CNNOracle", "Constrained", "FunctionReward",
           "GCContent", "HammingMotifCount", "PWMScore", "Reward", "RNAFoldEnergy", "StructureDistance",
           "UpstreamAUGCount", "WeightedSum", "as_reward", "jaspar_counts", "parse_reward"]

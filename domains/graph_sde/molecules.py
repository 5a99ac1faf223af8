r"""Molecules as graphs for GDSS: SMILES -> dense graphs -> RDKit molecules, with validity.

Encoding (GDSS, Jo et al. 2022, Sec. 4.2; QM9 / ZINC250k preprocessing of MoFlow): RDKit parses
the SMILES, the molecule is kekulised (aromatic bonds become alternating single/double bonds),
hydrogens stay implicit, each heavy atom is a node with a one-hot atom type over
``atom_types`` and each bond an edge whose value is its order 1, 2 or 3. The dense batch is a
:class:`~sciffusion.domains.graph_sde.datasets.DenseGraphs` built with ``features="atoms"``.

Decoding (:func:`graphs_to_mols`): atom types by argmax over the real (masked) nodes, bond
orders from the continuous adjacency by the thresholds of GDSS's ``quantize_mol``,

.. math::  b_{ij} = 0 \text{ if } A_{ij} < 0.5,\; 1 \text{ if } A_{ij} < 1.5,\;
           2 \text{ if } A_{ij} < 2.5,\; 3 \text{ otherwise}

(rounding, clamped to [0, 3]), and RDKit sanitisation decides validity. The optional valency
correction is GDSS's / MoFlow's ``correct_mol`` (Zang & Wang 2020, Sec. 3.3).

Needs RDKit: ``pip install "sciffusion[graphs]"``.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .datasets import DenseGraphs, to_dense

__all__ = [
    "ATOM_TYPES",
    "BOND_THRESHOLDS",
    "smiles_to_graphs",
    "mol_to_graph",
    "graphs_to_mols",
    "quantize_bonds",
    "correct_mol",
    "canonical_smiles",
    "load_smiles",
    "nci_molecules",
]

_EXTRA = 'pip install "sciffusion[graphs]"'

#: Heavy-atom types of QM9 (GDSS's QM9 setting); hydrogens are implicit.
ATOM_TYPES = ("C", "N", "O", "F")
#: Bond-order thresholds on the continuous adjacency (GDSS ``quantize_mol``).
BOND_THRESHOLDS = (0.5, 1.5, 2.5)


def _chem():
    try:
        from rdkit import Chem
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"graph_sde molecules need RDKit: {_EXTRA}") from e
    return Chem


class _QuietRDKit:
    """Silence RDKit's parse and sanitisation messages (we count failures instead)."""

    def __enter__(self):
        from rdkit import rdBase

        self._block = rdBase.BlockLogs()
        return self

    def __exit__(self, *exc):
        del self._block
        return False


def _bond_type(order: int):
    Chem = _chem()
    return {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}[order]


def canonical_smiles(mol_or_smiles) -> str | None:
    """RDKit canonical SMILES of a molecule or SMILES string; None when the string does not parse.

    Raises:
        TypeError: ``mol_or_smiles`` is neither a ``str`` nor an RDKit ``Mol``.
    """
    Chem = _chem()
    if not isinstance(mol_or_smiles, (str, Chem.Mol)):
        raise TypeError(f"mol_or_smiles must be a SMILES string or an RDKit Mol, got {type(mol_or_smiles).__name__}")
    with _QuietRDKit():
        # MolFromSmiles reports a parse or sanitisation failure by returning None (it does not
        # raise); MolToSmiles writes any Mol, sanitised or not, so nothing else is caught here
        mol = Chem.MolFromSmiles(mol_or_smiles) if isinstance(mol_or_smiles, str) else mol_or_smiles
        if mol is None:
            return None
        return Chem.MolToSmiles(mol)


def mol_to_graph(mol, atom_types: Sequence[str] = ATOM_TYPES):
    """A kekulised RDKit molecule as a networkx graph (node ``atom``, edge ``weight`` = order).

    Raises:
        ValueError: an atom outside ``atom_types``, a charged atom or radical, or a bond that is
            not single, double or triple after kekulisation (e.g. a dative ``->`` bond).
        rdkit.Chem.rdchem.KekulizeException: kekulisation fails (an unsanitised aromatic
            molecule; a subclass of ValueError).
    """
    import networkx as nx

    Chem = _chem()
    mol = Chem.Mol(mol)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    encoded = {Chem.BondType.SINGLE: 1.0, Chem.BondType.DOUBLE: 2.0, Chem.BondType.TRIPLE: 3.0}
    g = nx.Graph()
    for atom in mol.GetAtoms():
        sym = atom.GetSymbol()
        if sym not in atom_types:
            raise ValueError(f"atom {sym!r} is not one of atom_types={tuple(atom_types)}")
        if atom.GetFormalCharge() != 0 or atom.GetNumRadicalElectrons() != 0:
            raise ValueError(f"atom {atom.GetIdx()} ({sym}) is charged or a radical")
        g.add_node(atom.GetIdx(), atom=sym)
    for bond in mol.GetBonds():
        # by bond type, not GetBondTypeAsDouble: a dative bond also has order 1.0 there
        if bond.GetBondType() not in encoded:
            raise ValueError(f"bond {bond.GetIdx()} is {bond.GetBondType()}; only single, double and triple "
                             "bonds are encoded")
        g.add_edge(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), weight=encoded[bond.GetBondType()])
    return g


def smiles_to_graphs(
    smiles: Iterable[str], atom_types: Sequence[str] = ATOM_TYPES, max_atoms: int = 9
) -> tuple[DenseGraphs, list[str], dict]:
    r"""Encode SMILES as a dense molecular graph batch; bad entries are skipped and counted.

    Skip reasons (keys of the returned dict): ``invalid_smiles`` (RDKit cannot parse or
    sanitise it), ``too_large`` (more than ``max_atoms`` heavy atoms), ``atom_type`` (an atom
    outside ``atom_types``), ``charged`` (formal charges or radicals: the encoding has no
    charge channel, so such a molecule could not be decoded back), ``fragments`` (a ``.``
    mixture or salt), ``kekulize`` (kekulisation failed), ``bond_type`` (a bond other than
    single, double or triple after kekulisation, e.g. dative), ``empty``. A warning summarises
    the skips; bad data never raises mid-dataset (errors other than these RDKit / encoding
    ones, i.e. programming errors, do propagate).

    Args:
        smiles: SMILES strings.
        atom_types: Atom symbols, the one-hot channels (QM9: C, N, O, F).
        max_atoms: ``N`` of the dense batch (QM9: 9).

    Returns:
        ``(graphs, kept_smiles, skipped)``: the :class:`DenseGraphs` (``x`` one-hot atom types,
        ``adj`` bond orders), the RDKit canonical SMILES of the kept molecules in order, and
        ``{reason: count}``.

    Raises:
        ValueError: when every SMILES is skipped (or none is given).
    """
    Chem = _chem()
    atom_types = tuple(atom_types)
    if not atom_types or len(set(atom_types)) != len(atom_types):
        raise ValueError(f"atom_types must be distinct atom symbols, got {atom_types}")
    if not isinstance(max_atoms, int) or max_atoms < 1:
        raise ValueError(f"max_atoms must be a positive int, got {max_atoms!r}")
    if isinstance(smiles, str):
        raise TypeError("smiles must be a sequence of SMILES strings, not one string")
    graphs, kept, skipped, total = [], [], Counter(), 0
    with _QuietRDKit():
        for s in smiles:
            total += 1
            mol = Chem.MolFromSmiles(s) if isinstance(s, str) and s.strip() else None
            if mol is None:
                skipped["invalid_smiles"] += 1
                continue
            reason = _skip_reason(mol, atom_types, max_atoms)
            if reason is not None:
                skipped[reason] += 1
                continue
            try:
                g = mol_to_graph(mol, atom_types)
            except Chem.rdchem.KekulizeException:  # before ValueError: it is a subclass
                skipped["kekulize"] += 1
                continue
            except ValueError:  # atoms were checked by _skip_reason: a bond that is not 1, 2, 3
                skipped["bond_type"] += 1
                continue
            graphs.append(g)
            kept.append(Chem.MolToSmiles(mol))
    if skipped:
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        warnings.warn(f"smiles_to_graphs kept {len(kept)} of {total} SMILES; skipped {summary}", stacklevel=2)
    if not graphs:
        raise ValueError(
            f"smiles_to_graphs: none of the {total} SMILES could be encoded "
            f"(atom_types={atom_types}, max_atoms={max_atoms}; skipped {dict(skipped)})"
        )
    dense = to_dense(graphs, max_nodes=max_atoms, features="atoms", atom_types=atom_types)
    return dense, kept, dict(skipped)


def _skip_reason(mol, atom_types, max_atoms) -> str | None:
    n = mol.GetNumAtoms()
    if n == 0:
        return "empty"
    if len(_chem().GetMolFrags(mol)) > 1:
        return "fragments"
    if any(a.GetSymbol() not in atom_types for a in mol.GetAtoms()):
        return "atom_type"
    if n > max_atoms:
        return "too_large"
    if any(a.GetFormalCharge() != 0 or a.GetNumRadicalElectrons() != 0 for a in mol.GetAtoms()):
        return "charged"
    return None


def quantize_bonds(adj: torch.Tensor) -> torch.Tensor:
    r"""Bond orders from a continuous adjacency: round and clamp to {0, 1, 2, 3}, i.e. the
    thresholds :data:`BOND_THRESHOLDS` = (0.5, 1.5, 2.5) (GDSS ``quantize_mol``)."""
    adj = torch.as_tensor(adj)
    if not torch.isfinite(adj).all():
        raise ValueError("adj contains NaN or inf")
    t = torch.tensor(BOND_THRESHOLDS, dtype=adj.dtype if adj.is_floating_point() else torch.float64)
    return torch.bucketize(adj.to(t.dtype), t, right=True)


def _max_valence(symbol: str) -> int:
    Chem = _chem()
    table = Chem.GetPeriodicTable()
    allowed = [v for v in table.GetValenceList(symbol) if v >= 0]
    return max(allowed) if allowed else table.GetDefaultValence(symbol)


def _excess_atom(mol) -> tuple[int, int] | None:
    """``(atom index, excess)`` of the atom whose explicit bond-order sum most exceeds its
    largest allowed valence (ties: lowest index); None when no atom exceeds."""
    worst = None
    for atom in mol.GetAtoms():
        valence = sum(int(b.GetBondTypeAsDouble()) for b in atom.GetBonds())
        excess = valence - _max_valence(atom.GetSymbol())
        if excess > 0 and (worst is None or excess > worst[1]):
            worst = (atom.GetIdx(), excess)
    return worst


def correct_mol(mol):
    r"""Valency correction of GDSS / MoFlow (Zang & Wang 2020, Sec. 3.3).

    While some atom has more bond order than its largest allowed valence (C 4, N 3, O 2, F 1),
    take the atom with the largest excess, lower the order of its highest-order bond by one
    (a single bond is removed), and repeat; then keep the largest connected fragment (most
    atoms; GDSS's ``valid_mol_can_with_seg``). Each step removes one unit of bond order, so
    the loop ends; with neutral atoms of these types and explicit single/double/triple bonds
    the result always sanitises.

    Args:
        mol: An RDKit ``Mol`` / ``RWMol`` (not modified).

    Returns:
        A sanitised ``Chem.Mol`` (None only for a molecule with no atoms).
    """
    Chem = _chem()
    rw = Chem.RWMol(mol)
    if rw.GetNumAtoms() == 0:
        return None
    while True:
        worst = _excess_atom(rw)
        if worst is None:
            break
        atom = rw.GetAtomWithIdx(worst[0])
        bonds = sorted(atom.GetBonds(), key=lambda b: (-b.GetBondTypeAsDouble(), b.GetIdx()))
        b = bonds[0]
        i, j, order = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondTypeAsDouble())
        rw.RemoveBond(i, j)
        if order > 1:
            rw.AddBond(i, j, _bond_type(order - 1))
    out = rw.GetMol()
    frags = Chem.GetMolFrags(out, asMols=True, sanitizeFrags=False)
    best = max(frags, key=lambda m: m.GetNumAtoms())  # max keeps the first of equal sizes
    best = Chem.Mol(best)
    with _QuietRDKit():
        Chem.SanitizeMol(best)
    return best


def _check_dense(x, adj, mask):
    if isinstance(x, DenseGraphs):
        x, adj, mask = x.x, x.adj, x.mask
    x, adj = torch.as_tensor(x), torch.as_tensor(adj)
    if x.dim() != 3 or adj.dim() != 3 or adj.shape[0] != x.shape[0] or adj.shape[1:] != (x.shape[1], x.shape[1]):
        raise ValueError(f"need x (B, N, F) and adj (B, N, N), got {tuple(x.shape)} and {tuple(adj.shape)}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask = torch.as_tensor(mask).bool()
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    if not torch.isfinite(x).all() or not torch.isfinite(adj).all():
        raise ValueError("x or adj contains NaN or inf")
    return x.detach().cpu(), adj.detach().cpu(), mask.detach().cpu()


def graphs_to_mols(x, adj=None, mask=None, atom_types: Sequence[str] = ATOM_TYPES, correct: bool = False) -> list:
    r"""Decode dense molecular graphs into RDKit molecules.

    Atom types by argmax of ``x`` over the ``atom_types`` channels on the real nodes; bond
    orders by :func:`quantize_bonds` on the upper triangle of ``adj`` (both real nodes; the
    diagonal ignored); no formal charges are added (GDSS adds +1 to N/O/S with one excess
    bond; here that counts as invalid). Without correction, a molecule is valid when
    ``Chem.SanitizeMol`` succeeds (it may have several fragments, as in GDSS's count of
    validity without correction); invalid ones are None. With ``correct=True`` every molecule
    goes through :func:`correct_mol`, so every graph with a node gives a sanitised, connected
    molecule.

    Args:
        x: ``(B, N, F)`` atom-type scores with ``F = len(atom_types)``, or a DenseGraphs.
        adj: ``(B, N, N)`` continuous bond orders.
        mask: ``(B, N)`` bool node mask (None: all nodes real).
        atom_types: Symbols of the channels of ``x``.
        correct: Apply the valency correction.

    Returns:
        A list of ``B`` entries, ``Chem.Mol`` or None (invalid, or no real node).
    """
    Chem = _chem()
    x, adj, mask = _check_dense(x, adj, mask)
    atom_types = tuple(atom_types)
    if x.shape[-1] != len(atom_types):
        raise ValueError(f"x has {x.shape[-1]} channels but atom_types has {len(atom_types)}: {atom_types}")
    types = x.argmax(-1)
    orders = quantize_bonds(adj)
    out = []
    with _QuietRDKit():
        for k in range(x.shape[0]):
            real = mask[k].nonzero().flatten().tolist()
            if not real:
                out.append(None)
                continue
            rw = Chem.RWMol()
            idx = {}
            for v in real:
                idx[v] = rw.AddAtom(Chem.Atom(atom_types[int(types[k, v])]))
            for a in range(len(real)):
                for b in range(a + 1, len(real)):
                    o = int(orders[k, real[a], real[b]])
                    if o > 0:
                        rw.AddBond(idx[real[a]], idx[real[b]], _bond_type(o))
            if correct:
                out.append(correct_mol(rw))
                continue
            mol = rw.GetMol()
            try:
                Chem.SanitizeMol(mol)
            except Chem.rdchem.MolSanitizeException:  # AtomValence-, AtomKekulize-, KekulizeException
                mol = None
            out.append(mol)
    return out


def load_smiles(path, column: str | None = None) -> list[str]:
    """Read SMILES from a ``.smi``/``.txt`` file (first whitespace-separated token per line;
    blank and ``#`` lines skipped; a first line ``smiles``/``SMILES`` is a header) or a CSV
    file (QM9 / ZINC250k style) with a column named ``smiles``/``SMILES`` (any case;
    GDSS's QM9 CSV names it ``SMILES1``) or given by ``column``.

    Returns the strings as read (not validated: :func:`smiles_to_graphs` counts bad ones).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SMILES file at {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if column is None:
                found = [c for c in fields if c.strip().lower() in ("smiles", "smiles1", "canonical_smiles")]
                if not found:
                    raise ValueError(f"{path}: no SMILES column among {fields}; pass column=")
                column = found[0]
            elif column not in fields:
                raise ValueError(f"{path}: column {column!r} not among {fields}")
            out = [row[column].strip() for row in reader if row.get(column) and row[column].strip()]
    else:
        if column is not None:
            raise ValueError("column= applies to CSV files only")
        out = []
        with path.open() as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                out.append(line.split()[0])
        if out and out[0].lower() == "smiles":
            out = out[1:]
    if not out:
        raise ValueError(f"{path} holds no SMILES")
    return out


def nci_molecules(max_atoms: int = 9, atom_types: Sequence[str] = ATOM_TYPES) -> tuple[DenseGraphs, list[str], dict]:
    """The built-in molecule set: RDKit's NCI sample ``first_5K.smi`` (4999 lines
    ``SMILES<TAB>id``, shipped in the RDKit wheel under ``RDConfig.RDDataDir/NCI``), filtered to
    at most ``max_atoms`` heavy atoms of ``atom_types``.

    With the defaults (at most 9 heavy atoms of C, N, O, F; neutral; one fragment) it yields
    419 molecules (412 distinct canonical SMILES) with RDKit 2026.09; skipped: 2609 too large,
    1814 with other atoms, 137 mixtures/salts, 12 charged, 8 that RDKit does not parse
    (``NCI_DEFAULT_COUNT`` in the tests checks the count).

    Returns:
        ``(graphs, kept_smiles, skipped)`` as :func:`smiles_to_graphs` (no warning raised).
    """
    try:
        from rdkit import RDConfig
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"nci_molecules needs RDKit: {_EXTRA}") from e
    path = os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi")
    smiles = load_smiles(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smiles_to_graphs(smiles, atom_types=atom_types, max_atoms=max_atoms)

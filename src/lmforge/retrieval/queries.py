"""What a ranking takes and gives back: a batch of analyzed queries, and each query's best documents.

Both ranking paths, NumPy's (`postings.py`) and the compiled one (`compiled_ranking.py`), speak
these types, and `index.py` builds and reads them; they live here so that neither path imports
the other for them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

Ranked = tuple[np.ndarray, np.ndarray]  # (document positions, scores), best first


@dataclasses.dataclass(frozen=True)
class Queries:
    """A batch of analyzed queries in CSR form: row i's terms are term_ids[indptr[i]:indptr[i+1]],
    in increasing order, with their query weights; constants[i] is added to every document."""

    indptr: np.ndarray
    term_ids: np.ndarray
    weights: np.ndarray
    constants: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

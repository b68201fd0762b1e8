"""The PyTorch twin of fastrnn.lm.RNNLM (needs PyTorch): the same layers, parameter names,
loss and hidden-state convention, built from torch.nn's own modules. RNNLM.to_torch()
returns one with the model's weights; the tests check the two train alike step for step,
and benchmarks/lm_vs_torch.py times them against each other.
"""
try:
    import torch
    import torch.nn.functional as F
except ImportError as exc:  # torch stays optional for the rest of fastrnn
    raise ImportError("fastrnn.lm_torch needs PyTorch: pip install 'fastrnn[torch]' "
                      "(or pip install torch)") from exc


class TorchRNNLM(torch.nn.Module):
    """embedding -> dropout -> torch.nn.RNN/LSTM/GRU -> dropout -> linear -> cross-entropy.
    `config` is RNNLM.config. forward(tokens, targets, hidden) takes (T, B) int64 tensors
    and returns (mean loss in nats per token, final hidden state), as RNNLM.forward."""

    def __init__(self, config, dtype=torch.float32):
        super().__init__()
        c = config
        V, E, H, L, P = c["vocab_size"], c["emb_size"], c["hidden_size"], c["num_layers"], c["proj_size"]
        self.config = dict(c)
        self.embedding = torch.nn.Embedding(V, E, dtype=dtype)
        self.drop = torch.nn.Dropout(c["dropout"])
        kw = dict(num_layers=L, dropout=c["dropout"] if L > 1 else 0.0, dtype=dtype)
        cell = c["cell"]
        if cell == "lstm":
            self.rnn = torch.nn.LSTM(E, H, proj_size=P, **kw)
        elif cell == "gru":
            self.rnn = torch.nn.GRU(E, H, **kw)
        else:
            self.rnn = torch.nn.RNN(E, H, nonlinearity=cell[4:], **kw)
        self.decoder = torch.nn.Linear(P or H, V, dtype=dtype)
        if c["tie_weights"]:
            self.decoder.weight = self.embedding.weight

    def forward(self, tokens, targets, hidden=None):
        out, hidden = self.rnn(self.drop(self.embedding(tokens)), hidden)
        logits = self.decoder(self.drop(out))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return loss, hidden


def detach(hidden):
    """The hidden state cut from the graph (truncated BPTT carries it into the next window)."""
    if hidden is None:
        return None
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()

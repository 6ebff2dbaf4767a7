"""Builders of the models corral's model-parity tests and engine benchmarks use.

Each function returns a torch.nn.Module in eval mode with freshly initialised
weights (BatchNorm statistics calibrated on random inputs, see
_calibrate_batchnorm), so the export tool can load them by name and make them
reproducible with its --seed option:

    export.py --builder bench.models.zoo:resnet18 --seed 0 \\
        --input input:-1x3x224x224:FP32 --output logits --repo models --name resnet18
    export.py --builder bench.models.zoo:transformer --seed 0 \\
        --input ids:-1x-1:INT64:0:1000 --output logits --repo models --name transformer
    export.py --builder bench.models.zoo:transformer_masked --seed 0 \\
        --input ids:-1x-1:INT64:0:1000 --input mask:-1x-1:INT64:0:2 --output logits \\
        --repo models --name transformer_masked

SPECS maps each model name to its export arguments (input specification,
output name) so tests and benchmarks agree on them; build(name) calls the
builder of that name.
"""

import torch
from torch import nn

# The vocabulary and the longest sequence of the transformer classifier.
TRANSFORMER_VOCAB = 1000
TRANSFORMER_MAX_LEN = 128

SPECS = {
    "resnet18": {"inputs": ["input:-1x3x224x224:FP32"], "output": "logits"},
    "mobilenet_v2": {"inputs": ["input:-1x3x224x224:FP32"], "output": "logits"},
    "squeezenet1_1": {"inputs": ["input:-1x3x224x224:FP32"], "output": "logits"},
    "mlp": {"inputs": ["input:-1x784:FP32"], "output": "logits"},
    "transformer": {"inputs": ["ids:-1x-1:INT64:0:%d" % TRANSFORMER_VOCAB], "output": "logits"},
    "transformer_masked": {"inputs": ["ids:-1x-1:INT64:0:%d" % TRANSFORMER_VOCAB, "mask:-1x-1:INT64:0:2"],
                           "output": "logits"},
}


def _calibrate_batchnorm(model, shape, batches=1):
    """Gives every BatchNorm the statistics and scales a trained network would have.

    Freshly initialised BatchNorm layers hold mean 0, variance 1, scale 1 and
    shift 0, so in eval mode they do nothing: a BatchNorm folding that dropped
    the statistics would still match PyTorch, and in MobileNetV2 the activations
    shrink layer after layer until the logits are about 1e-9, too small for a
    1e-3 comparison to mean anything. Random scales and shifts, then running
    statistics gathered from random N(0, 1) inputs (the export tool's default
    inputs), make every layer normalise for real and keep logits of order 1.
    Everything is drawn from torch's generator, so the export tool's --seed
    makes it reproducible.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration batches
        model.train()
        for _ in range(batches):
            model(torch.randn(*shape))
        for bn in bns:
            bn.momentum = 0.1
    return model.eval()


def _vision(name, num_classes):
    # torchvision is imported lazily: the MLP and the transformer do not need it.
    import torchvision
    fn = getattr(torchvision.models, name)
    model = fn(weights=None, num_classes=num_classes)
    return _calibrate_batchnorm(model, (4, 3, 224, 224))


def resnet18(num_classes=1000):
    return _vision("resnet18", num_classes)


def mobilenet_v2(num_classes=1000):
    return _vision("mobilenet_v2", num_classes)


def squeezenet1_1(num_classes=1000):
    return _vision("squeezenet1_1", num_classes)


class MLP(nn.Module):
    """Flattened 28x28 images to class logits: Linear, ReLU, Linear."""

    def __init__(self, n_in=784, hidden=512, n_out=10):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def mlp(n_in=784, hidden=512, n_out=10):
    return MLP(n_in, hidden, n_out).eval()


class _EncoderLayer(nn.Module):
    """A post-norm transformer encoder layer written with plain tensor operations.

    It holds the same parameters under the same names as
    nn.TransformerEncoderLayer (self_attn, linear1, linear2, norm1, norm2) and
    computes the same function, but always by the unfused math. Traced by the
    TorchScript-based exporter, nn.MultiheadAttention in eval mode records the
    sequence length of the example input as a constant in its head-splitting
    Reshape (the exported graph then fails for any other length) and brings a
    Mod op along; these layers export to MatMul, Softmax, LayerNormalization and
    Erf-based GELU with the sequence length read from Shape.
    """

    def __init__(self, dim, heads, ff, eps=1e-5):
        super().__init__()
        if dim % heads:
            raise ValueError("dim %d is not a multiple of heads %d" % (dim, heads))
        self.heads = heads
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1 = nn.Linear(dim, ff)
        self.linear2 = nn.Linear(ff, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def _attention(self, x):
        attn = self.self_attn
        b, t, d = x.shape
        h = self.heads
        q, k, v = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        # [b, t, d] -> [b, h, t, d/h]
        q = q.reshape(b, t, h, d // h).transpose(1, 2)
        k = k.reshape(b, t, h, d // h).transpose(1, 2)
        v = v.reshape(b, t, h, d // h).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / float(d // h) ** 0.5)
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        ctx = ctx.transpose(1, 2).reshape(b, t, d)
        return attn.out_proj(ctx)

    def forward(self, x):
        x = self.norm1(x + self._attention(x))
        ff = self.linear2(nn.functional.gelu(self.linear1(x)))
        return self.norm2(x + ff)


class _Encoder(nn.Module):
    """The plain layers in a `layers` list, as nn.TransformerEncoder keeps them."""

    def __init__(self, dim, heads, ff, n_layers):
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads, ff) for _ in range(n_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerClassifier(nn.Module):
    """Token ids [batch, seq] to class logits [batch, classes].

    Token embedding plus a learned positional embedding, a stack of post-norm
    encoder layers (multi-head self-attention, LayerNorm, GELU feed-forward),
    mean pooling over the sequence and a Linear to the classes. With
    fused=True the encoder is torch's own nn.TransformerEncoder; the default
    is the plain layers, which take the same state dict and compute the same
    logits, and export to a graph that runs at every sequence length.
    """

    def __init__(self, vocab=TRANSFORMER_VOCAB, dim=64, heads=4, ff=128, layers=2,
                 classes=10, max_len=TRANSFORMER_MAX_LEN, fused=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        if fused:
            layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, activation="gelu",
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        else:
            self.encoder = _Encoder(dim, heads, ff, layers)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids):
        # Slicing the positional table by the sequence length keeps the graph free
        # of Range: the exporter emits Shape, Gather and Slice instead.
        x = self.tok(ids) + self.pos[:, :ids.shape[1], :]
        x = self.encoder(x)
        return self.head(x.mean(dim=1))


def transformer(vocab=TRANSFORMER_VOCAB, dim=64, heads=4, ff=128, layers=2, classes=10,
                max_len=TRANSFORMER_MAX_LEN):
    return TransformerClassifier(vocab, dim, heads, ff, layers, classes, max_len).eval()


class _MaskedEncoderLayer(_EncoderLayer):
    """The plain encoder layer with an additive attention bias on the keys.

    `bias` is [batch, 1, 1, seq]: 0 where a key is a real token and a large
    negative number where it is padding, so that after the softmax a padded key
    gets exactly zero weight and the real positions compute what they would
    compute without the padding.
    """

    def _attention(self, x, bias):
        attn = self.self_attn
        b, t, d = x.shape
        h = self.heads
        q, k, v = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q = q.reshape(b, t, h, d // h).transpose(1, 2)
        k = k.reshape(b, t, h, d // h).transpose(1, 2)
        v = v.reshape(b, t, h, d // h).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / float(d // h) ** 0.5) + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        ctx = ctx.transpose(1, 2).reshape(b, t, d)
        return attn.out_proj(ctx)

    def forward(self, x, bias):
        x = self.norm1(x + self._attention(x, bias))
        ff = self.linear2(nn.functional.gelu(self.linear1(x)))
        return self.norm2(x + ff)


# Added to the attention scores of padded keys: exp() of it underflows to exactly 0 in FP32.
MASK_BIAS = -1e9


class MaskedTransformerClassifier(nn.Module):
    """Token ids and an attention mask [batch, seq] to class logits [batch, classes].

    The transformer classifier with padding made harmless: mask is 1 for a real
    token and 0 for padding; padded keys get MASK_BIAS before the softmax and the
    pooling is the masked mean sum(h * mask) / sum(mask), so appending padding
    (ids anything, mask 0) to a sequence leaves its logits unchanged. A row
    whose mask is all 0 pools to zeros (the divisor is at least 1).

    The mask is read for the first len(ids) positions; positions it does not
    cover count as real tokens. This keeps the model defined when the two
    inputs' lengths differ, as they do in the export tool's parity vectors,
    which draw every dynamic axis on its own.
    """

    def __init__(self, vocab=TRANSFORMER_VOCAB, dim=64, heads=4, ff=128, layers=2,
                 classes=10, max_len=TRANSFORMER_MAX_LEN):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.layers = nn.ModuleList(_MaskedEncoderLayer(dim, heads, ff) for _ in range(layers))
        self.head = nn.Linear(dim, classes)

    def forward(self, ids, mask):
        t = ids.shape[1]
        # Concat and Slice rather than Pad: the mask padded with ones to at least len(ids).
        m = torch.cat([mask, ids * 0 + 1], dim=1)[:, :t]
        x = self.tok(ids) + self.pos[:, :t, :]
        mf = m.to(x.dtype)
        bias = ((1.0 - mf) * MASK_BIAS).unsqueeze(1).unsqueeze(2)
        for layer in self.layers:
            x = layer(x, bias)
        w = mf.unsqueeze(2)
        pooled = (x * w).sum(dim=1) / torch.clamp(w.sum(dim=1), min=1.0)
        return self.head(pooled)


def transformer_masked(vocab=TRANSFORMER_VOCAB, dim=64, heads=4, ff=128, layers=2, classes=10,
                       max_len=TRANSFORMER_MAX_LEN):
    return MaskedTransformerClassifier(vocab, dim, heads, ff, layers, classes, max_len).eval()


def build(name, **kwargs):
    """The model called `name` in SPECS, freshly initialised."""
    if name not in SPECS:
        raise KeyError("unknown model '%s', expected one of %s" % (name, ", ".join(SPECS)))
    return globals()[name](**kwargs)

"""The bundled digits classifier: a small MLP over sklearn's 8x8 digit images.

build() returns the network corral serves. It takes the 64 raw pixel values of
an image (numbers from 0 to 16, as sklearn.datasets.load_digits() gives them)
as FP32 and returns 10 logits, one per digit. Training feeds pixels divided by
16; train.py then folds that scale into the first layer's weights, so the
exported graph is only Gemm, Relu, Gemm and a client can send raw integers.
"""

import torch
from torch import nn

N_FEATURES = 64
N_CLASSES = 10


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(N_FEATURES, hidden)
        self.fc2 = nn.Linear(hidden, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Makes forward(x) compute what forward(x * scale) computed before."""
        self.fc1.weight.mul_(scale)


def build(hidden: int = 64) -> DigitsMLP:
    return DigitsMLP(hidden)

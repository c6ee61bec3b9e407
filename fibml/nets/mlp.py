"""A plain multilayer perceptron: the backscatter ANN of cyclegan-simulation-domain-adaptation.txt (2.3).

"three input features, followed by four hidden layers containing 16, 32, 32, and 32 neurons,
respectively, and a single output": (Z, E, penetration depth) -> backscatter coefficient eta.
A plain nn.Module (fibml.tasks.backscatter trains it); the inputs are the scaled features of
fibml.data.backscatter.scale_features.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU}


class MLP(nn.Module):
    """Fully connected layers with an activation after every hidden layer and a linear output.

    forward: (B, in_features) -> (B, out_features).
    hidden: widths of the hidden layers, in order (the paper's ANN: 16, 32, 32, 32).
    activation: one of ACTIVATIONS ("relu", "gelu", "tanh", "silu", "elu").
    """

    def __init__(
        self,
        in_features: int = 3,
        hidden: Sequence[int] = (16, 32, 32, 32),
        out_features: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        widths = [int(in_features), *(int(h) for h in hidden)]
        if min(widths) < 1 or int(out_features) < 1:
            raise ValueError(
                f"layer widths must be >= 1, got in {in_features}, hidden {list(hidden)}, out {out_features}"
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.hidden = tuple(widths[1:])
        layers: list[nn.Module] = []
        for n_in, n_out in pairwise(widths):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], self.out_features))  # linear head: eta is a regression target
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

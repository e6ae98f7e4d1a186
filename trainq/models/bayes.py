"""Approximate Bayesian layers and the predictive distributions built from their samples.

Mean-field Gaussian posteriors q(w) = N(mu, sigma^2) with sigma = softplus(rho), against a prior N(0, prior_sigma^2):

    dense_bayes    the local reparameterization trick (Kingma et al. 2015): sample the pre-activations, whose
                   mean is x mu^T and variance x^2 (sigma^2)^T, instead of one weight matrix for the whole batch
    conv2d_bayes   Flipout (Wen et al. 2018): one weight perturbation per batch, decorrelated across examples by
                   random signs on the input and output channels

The KL term is closed form and summed over every weight; the loss is mean NLL + beta * KL / N_train, N_train the
number of training rows (never the batch size: scaling by the batch over-weights the prior and ruins calibration).
Under `mc_dropout` only dropout layers sample at prediction time; BatchNorm, noise and stochastic pooling stay in
evaluation mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-12


class BayesModule(nn.Module):
    """A layer with a Gaussian posterior over its weights; `sample` False uses the posterior means."""

    sample: bool = True

    def _init_posterior(self, prior_sigma: float, rho_init: float) -> None:
        self.prior_sigma = prior_sigma
        for name in list(self._parameters):
            if name.endswith("_rho"):
                nn.init.constant_(self._parameters[name], rho_init)

    def kl(self) -> torch.Tensor:
        """KL(q || p) summed over the layer's weights, closed form for two Gaussians."""
        total = 0.0
        for name, mu in self.named_parameters():
            if name.endswith("_mu"):
                sigma = F.softplus(getattr(self, name[:-3] + "_rho"))
                p = self.prior_sigma
                total = total + (math.log(p) - torch.log(sigma + EPS)
                                 + (sigma ** 2 + mu ** 2) / (2 * p * p) - 0.5).sum()
        return total


class BayesLinear(BayesModule):
    def __init__(self, inputs: int, units: int, bias: bool, prior_sigma: float, rho_init: float):
        super().__init__()
        self.weight_mu = nn.Parameter(torch.empty(units, inputs))
        self.weight_rho = nn.Parameter(torch.empty(units, inputs))
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        if bias:
            self.bias_mu = nn.Parameter(torch.zeros(units))
            self.bias_rho = nn.Parameter(torch.empty(units))
        else:
            self.bias_mu = self.bias_rho = None
        self._init_posterior(prior_sigma, rho_init)

    @property
    def weight(self) -> torch.Tensor:  # what an initializer of the spec sets: the posterior means
        return self.weight_mu

    @property
    def bias(self) -> torch.Tensor | None:
        return self.bias_mu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        if not self.sample:
            return mean
        var = F.linear(x * x, F.softplus(self.weight_rho) ** 2,
                       F.softplus(self.bias_rho) ** 2 if self.bias_rho is not None else None)
        return mean + torch.sqrt(var + EPS) * torch.randn_like(mean)


class BayesConv2d(BayesModule):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, bias: bool,
                 prior_sigma: float, rho_init: float):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight_mu = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.weight_rho = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        if bias:
            self.bias_mu = nn.Parameter(torch.zeros(out_channels))
            self.bias_rho = nn.Parameter(torch.empty(out_channels))
        else:
            self.bias_mu = self.bias_rho = None
        self._init_posterior(prior_sigma, rho_init)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_mu

    @property
    def bias(self) -> torch.Tensor | None:
        return self.bias_mu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.conv2d(x, self.weight_mu, self.bias_mu, self.stride, self.padding)
        if not self.sample:
            return mean
        delta = F.softplus(self.weight_rho) * torch.randn_like(self.weight_rho)  # one perturbation per batch
        sign_in = torch.randint_like(x[:, :, :1, :1], 2) * 2 - 1  # per example and channel
        sign_out = torch.randint_like(mean[:, :, :1, :1], 2) * 2 - 1
        out = mean + F.conv2d(x * sign_in, delta, None, self.stride, self.padding) * sign_out
        if self.bias_rho is not None:  # the bias's perturbation too, with the output signs of each example
            out = out + (F.softplus(self.bias_rho) * torch.randn_like(self.bias_rho)).view(1, -1, 1, 1) * sign_out
        return out


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """The KL of every Bayesian layer of the model, summed; 0 for a model without one."""
    terms = [m.kl() for m in model.modules() if isinstance(m, BayesModule)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def sampling_mode(model: nn.Module, method: str) -> None:
    """Evaluation mode for Monte Carlo prediction: everything in evaluation mode (BatchNorm's running statistics,
    no noise, stochastic pooling's weighted average) except what samples under `method`: dropout layers under
    mc_dropout; Bayesian layers always sample, in either mode."""
    model.eval()
    if method == "mc_dropout":
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()


# ---------------------------------------------------------------------------------------------------------------------
# Measures of a predictive distribution
# ---------------------------------------------------------------------------------------------------------------------

BINS = 15


def reliability(probs: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> tuple[torch.Tensor, list[dict]]:
    """Expected calibration error over equal-width confidence bins, and the bins (count, confidence, accuracy)."""
    confidence, pred = probs.max(dim=1)
    right = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    which = torch.bucketize(confidence, edges[1:-1], right=True)
    counts = torch.bincount(which, minlength=bins).float()
    conf = torch.bincount(which, confidence, minlength=bins)
    acc = torch.bincount(which, right, minlength=bins)
    ece = ((conf - acc).abs().sum() / max(1, len(y)))
    table = [{"low": float(edges[i]), "high": float(edges[i + 1]), "count": int(counts[i]),
              "confidence": float(conf[i] / counts[i]) if counts[i] else None,
              "accuracy": float(acc[i] / counts[i]) if counts[i] else None} for i in range(bins)]
    return ece, table


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(EPS))).sum(dim=-1)


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """The probability that a positive (a misclassified row) scores above a negative; ties count half."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return None
    values = torch.cat([pos, neg]).double()
    ranks = torch.argsort(torch.argsort(values)).double() + 1  # 1-based; tied values get their average rank next
    unique, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.float64, device=values.device).index_add_(0, inverse, ranks)
    counts = torch.bincount(inverse, minlength=len(unique)).double()
    ranks = (sums / counts)[inverse]
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def classification_measures(samples: torch.Tensor, y: torch.Tensor, prefix: str, final: bool) -> dict:
    """samples: (T, N, K) class probabilities of T posterior samples. NLL, ECE, Brier of their mean; at the end also
    the reliability table, the AUROC of predictive entropy for the misclassified rows, entropy, mutual information."""
    probs = samples.mean(0)
    out: dict = {}
    out[f"{prefix}_nll"] = float(-torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(EPS)).mean())
    ece, table = reliability(probs, y)
    out[f"{prefix}_ece"] = float(ece)
    out[f"{prefix}_brier"] = float(((probs - F.one_hot(y, probs.shape[1]).to(probs.dtype)) ** 2).sum(1).mean())
    if final:
        total = entropy(probs)
        wrong = probs.argmax(1) != y
        out[f"{prefix}_reliability"] = table
        out[f"{prefix}_entropy_auroc"] = auroc(total, wrong)
        out[f"{prefix}_entropy"] = float(total.mean())
        out[f"{prefix}_mutual_information"] = float((total - entropy(samples).mean(0)).mean())
    return out


Z95, Z68 = 1.959964, 0.994458


def regression_measures(mean: torch.Tensor, epistemic_var: torch.Tensor, noise_var: float | torch.Tensor,
                        y: torch.Tensor, prefix: str) -> dict:
    """Gaussian predictive N(mean, epistemic + noise) in the target's units: NLL, RMSE, central-interval coverage
    and width, CRPS, and the mean epistemic and aleatoric standard deviations. `noise_var`: one variance
    (homoscedastic) or one per row (learned)."""
    var = epistemic_var + noise_var
    std = var.clamp_min(EPS).sqrt()
    z = (y - mean) / std
    nll = 0.5 * torch.log(2 * math.pi * var.clamp_min(EPS)) + 0.5 * z ** 2
    normal = torch.distributions.Normal(0.0, 1.0)
    crps = std * (z * (2 * normal.cdf(z) - 1) + 2 * torch.exp(normal.log_prob(z)) - 1 / math.sqrt(math.pi))
    return {f"{prefix}_nll": float(nll.mean()), f"{prefix}_rmse": float(((y - mean) ** 2).mean().sqrt()),
            f"{prefix}_coverage95": float((z.abs() <= Z95).float().mean()),
            f"{prefix}_coverage68": float((z.abs() <= Z68).float().mean()),
            f"{prefix}_width95": float((2 * Z95 * std).mean()), f"{prefix}_crps": float(crps.mean()),
            f"{prefix}_std_epistemic": float(epistemic_var.clamp_min(0).sqrt().mean()),
            f"{prefix}_std_aleatoric": float(torch.as_tensor(noise_var, dtype=torch.float64).sqrt().mean())}


def fit_noise(mean: torch.Tensor, epistemic_var: torch.Tensor, y: torch.Tensor) -> float:
    """The homoscedastic noise variance that maximizes the Gaussian likelihood of held-out targets, given the
    model's epistemic variance per row (a search over a log grid: the likelihood is one-dimensional and smooth)."""
    scale = float(((y - mean) ** 2).mean().clamp_min(EPS))
    grid = torch.logspace(-6, 1, 281, dtype=torch.float64, device=mean.device) * scale
    var = epistemic_var.double().view(1, -1) + grid.view(-1, 1)
    nll = (torch.log(var) + (y - mean).double().view(1, -1) ** 2 / var).mean(1)
    return float(grid[int(nll.argmin())])

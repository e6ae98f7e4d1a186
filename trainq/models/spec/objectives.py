"""What a run optimizes and how: losses, optimizers, learning-rate schedules, regularization and augmentation."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from trainq.models.spec.base import Spec

ClassWeights = list[Annotated[float, Field(ge=0, le=1e6)]] | None


class MseLossSpec(Spec):
    type: Literal["mse"]


class MaeLossSpec(Spec):
    type: Literal["mae"]


class HuberLossSpec(Spec):
    type: Literal["huber"]
    delta: float = Field(1.0, gt=0, le=1e6)


class BceLossSpec(Spec):
    type: Literal["bce"]  # binary cross entropy on a logit: the last layer has one unit and no sigmoid
    pos_weight: float | None = Field(None, gt=0, le=1e6)


class CrossEntropyLossSpec(Spec):
    type: Literal["cross_entropy"]  # softmax + negative log-likelihood on logits
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: ClassWeights = None


class NllLossSpec(Spec):
    type: Literal["nll"]  # -log p_y on probabilities: the model ends in a softmax
    class_weights: ClassWeights = None


class HingeLossSpec(Spec):
    type: Literal["hinge"]  # multi-class hinge, the course's sum form: sum_{j != y} max(0, s_j - s_y + margin)
    margin: float = Field(1.0, gt=0, le=1e6)


class PerceptronLossSpec(Spec):
    type: Literal["perceptron"]  # max(0, -t s) with t = +-1: SGD on it is the perceptron rule; predicts step(s)


class MdnNllLossSpec(Spec):
    type: Literal["mdn_nll"]  # negative log-likelihood of the target under the mdn head's mixture


class GaussianNllLossSpec(Spec):
    # heteroscedastic regression: two output units, the mean and the noise variance's softplus argument, and the
    # Gaussian NLL; with inference.noise: learned, the noise of a Bayesian regression is learned per input this way
    type: Literal["gaussian_nll"]


LossSpec = Annotated[Union[MseLossSpec, MaeLossSpec, HuberLossSpec, BceLossSpec, CrossEntropyLossSpec, NllLossSpec,
                           HingeLossSpec, PerceptronLossSpec, MdnNllLossSpec, GaussianNllLossSpec],
                     Field(discriminator="type")]

Lr = Annotated[float, Field(gt=0, le=100)]
Beta = Annotated[float, Field(ge=0, lt=1)]


class SgdSpec(Spec):
    type: Literal["sgd"]  # batch, mini-batch or online (batch_size 1) gradient descent
    lr: Lr = 0.01
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SgdSpec":
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class MomentumSpec(Spec):
    type: Literal["momentum"]  # SGD with classical momentum
    lr: Lr = 0.01
    momentum: float = Field(0.9, gt=0, lt=1)


class NesterovSpec(Spec):
    type: Literal["nesterov"]  # SGD with Nesterov momentum
    lr: Lr = 0.01
    momentum: float = Field(0.9, gt=0, lt=1)


class AdagradSpec(Spec):
    type: Literal["adagrad"]
    lr: Lr = 0.01
    eps: float = Field(1e-10, gt=0, le=1)


class RmspropSpec(Spec):
    type: Literal["rmsprop"]
    lr: Lr = 0.001
    alpha: Beta = 0.99
    momentum: float = Field(0.0, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, le=1)


class AdamSpec(Spec):
    type: Literal["adam"]
    lr: Lr = 0.001
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, le=1)


class AdamwSpec(Spec):
    type: Literal["adamw"]  # Adam with decoupled weight decay (regularization.weight_decay, default 0.01)
    lr: Lr = 0.001
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, le=1)


class LbfgsSpec(Spec):
    type: Literal["lbfgs"]  # quasi-Newton; best with full batches (batch_size >= the training split)
    lr: Lr = 1.0
    max_iter: int = Field(20, gt=0, le=1000)
    history_size: int = Field(100, gt=0, le=1000)
    line_search: Literal["strong_wolfe", "none"] = "strong_wolfe"


OptimizerSpec = Annotated[Union[SgdSpec, MomentumSpec, NesterovSpec, AdagradSpec, RmspropSpec, AdamSpec, AdamwSpec,
                                LbfgsSpec], Field(discriminator="type")]


class NoScheduleSpec(Spec):
    type: Literal["none"]


class StepScheduleSpec(Spec):
    type: Literal["step"]  # lr times gamma every step_size epochs
    step_size: int = Field(10, gt=0)
    gamma: float = Field(0.1, gt=0, le=1)


class ExponentialScheduleSpec(Spec):
    type: Literal["exponential"]  # lr times gamma every epoch
    gamma: float = Field(0.95, gt=0, le=1)


class CosineScheduleSpec(Spec):
    type: Literal["cosine"]  # anneals lr to min_lr over the run's epochs
    min_lr: float = Field(0.0, ge=0)


class OneCycleScheduleSpec(Spec):
    type: Literal["one_cycle"]  # per step: up to max_lr over pct_start of the run, then down
    max_lr: Lr = 0.01
    pct_start: float = Field(0.3, gt=0, lt=1)


class PlateauScheduleSpec(Spec):
    type: Literal["reduce_on_plateau"]  # lr times factor when val_loss stops improving for patience epochs
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(5, ge=0)
    min_lr: float = Field(0.0, ge=0)


class WarmupScheduleSpec(Spec):
    type: Literal["warmup"]  # lr rises linearly from start_factor * lr to lr over `epochs`, then stays
    epochs: int = Field(5, gt=0)
    start_factor: float = Field(0.1, gt=0, le=1)


ScheduleSpec = Annotated[Union[NoScheduleSpec, StepScheduleSpec, ExponentialScheduleSpec, CosineScheduleSpec,
                               OneCycleScheduleSpec, PlateauScheduleSpec, WarmupScheduleSpec],
                         Field(discriminator="type")]


class RegularizationSpec(Spec):
    l2: float = Field(0.0, ge=0, le=10)  # coupled: adds l2 * theta to the gradient, as in the course's update rule
    weight_decay: float | None = Field(None, ge=0, le=10)  # decoupled: theta *= 1 - lr * wd (adamw: default 0.01)
    l1: float = Field(0.0, ge=0, le=10)  # adds l1 * sign(theta) to the gradient
    max_grad_norm: float | None = Field(None, gt=0)  # clip the global gradient norm
    input_noise: float = Field(0.0, ge=0, le=100)  # std of Gaussian noise added to the inputs in training


Prob = Annotated[float, Field(ge=0, le=1)]


class AffineAug(Spec):
    type: Literal["affine"]  # rotation, translation, zoom and shear, drawn per sample
    degrees: float = Field(0.0, ge=0, le=180)
    translate: float = Field(0.0, ge=0, lt=1)  # fraction of the size
    scale: tuple[Annotated[float, Field(gt=0, le=10)], Annotated[float, Field(gt=0, le=10)]] = (1.0, 1.0)
    shear: float = Field(0.0, ge=0, le=45)  # degrees
    p: Prob = 1.0


class HflipAug(Spec):
    type: Literal["hflip"]
    p: Prob = 0.5


class VflipAug(Spec):
    type: Literal["vflip"]
    p: Prob = 0.5


class InvertAug(Spec):
    type: Literal["invert"]  # x -> -x on standardized data (1 - x on [0, 1] data)
    p: Prob = 0.5


class CropAug(Spec):
    type: Literal["crop"]  # pad by `padding` pixels, then crop back to the original size at a random place
    padding: int = Field(2, ge=1, le=64)
    p: Prob = 1.0


class GaussianNoiseAug(Spec):
    type: Literal["gaussian_noise"]
    std: float = Field(0.05, ge=0, le=10)
    p: Prob = 1.0


class PcaColorAug(Spec):
    type: Literal["pca_color"]  # AlexNet's colour noise along the principal components of the training pixels
    std: float = Field(0.1, ge=0, le=10)


AugmentationSpec = Annotated[Union[AffineAug, HflipAug, VflipAug, InvertAug, CropAug, GaussianNoiseAug, PcaColorAug],
                             Field(discriminator="type")]


class TtaSpec(Spec):
    """Test-time augmentation: test predictions averaged over the image, its flip, and shifted crops."""

    flips: bool = True
    crops: int = Field(0, ge=0, le=16)  # shift by this many pixels in the four directions (0: no crops)


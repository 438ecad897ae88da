"""Measuring trained models on a loader: top-1 accuracy of one model or of several, each in its
own memory layout, and the accuracy and negative log-likelihood of an ensemble of models (the
mean of their softmaxes). Used by the engine after every epoch and by methods for what they
measure at the end."""

from __future__ import annotations

import torch
from torch import nn


def widen(t: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (bf16/fp16 autocast) in float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy in percent over the whole loader."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    for x, y in loader.epoch_batches(0):
        correct += (model(x).argmax(-1) == y).sum()
    model.train(was_training)
    return 100.0 * correct.item() / loader.num_samples


def _channels_last(model: nn.Module) -> bool:
    """Whether the model's convolutions are laid out channels-last (as a stage trains them with
    ``speed.channels_last``): the input is then given in that layout too, saving a reorder
    per layer."""
    return any(p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())


@torch.inference_mode()
def evaluate_all(models: dict[str, nn.Module], loader) -> dict[str, float]:
    """Top-1 accuracy in percent of every model over the whole loader, without autograd's
    bookkeeping, each model fed in its own memory layout (channels-last input for a
    channels-last model). Model by model, so that one model's weights stay in the CPU's caches
    over all batches (interleaving the models batch by batch measured a little slower on a
    2-core CPU). The same accuracies as ``evaluate`` of each model."""
    out = {}
    for name, model in models.items():
        was_training = model.training
        model.eval()
        channels_last = _channels_last(model)
        correct = torch.zeros((), dtype=torch.int64, device=loader.device)
        for x, y in loader.epoch_batches(0):
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            correct += (model(x).argmax(-1) == y).sum()
        model.train(was_training)
        out[name] = 100.0 * correct.item() / loader.num_samples
    return out


@torch.no_grad()
def evaluate_ensemble(models: list[nn.Module], loader) -> tuple[float, float]:
    """The models' ensemble, the mean of their softmaxes: its top-1 accuracy in percent over
    the whole loader, and its mean negative log-likelihood of the true class (a number that
    moves with any change of how the ensemble is formed, where the accuracy may not)."""
    states = [m.training for m in models]
    for m in models:
        m.eval()
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    nll = torch.zeros((), dtype=torch.float64, device=loader.device)
    for x, y in loader.epoch_batches(0):
        probs = torch.stack([widen(m(x)).softmax(-1) for m in models]).mean(0)
        correct += (probs.argmax(-1) == y).sum()
        nll -= probs.gather(-1, y[:, None]).log().sum().double()
    for m, was_training in zip(models, states, strict=True):
        m.train(was_training)
    return 100.0 * correct.item() / loader.num_samples, nll.item() / loader.num_samples

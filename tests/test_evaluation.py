"""The evaluation pass: every model of a stage measured together gives exactly the accuracies
of measuring each model on its own, whatever its memory layout, and leaves each model in the
mode it found it in."""

import numpy as np
import torch

from mutualbench.archs import create_arch
from mutualbench.core.evaluation import evaluate, evaluate_all
from mutualbench.data.loader import DeviceLoader


def loader(n: int = 40, batch_size: int = 16) -> DeviceLoader:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    return DeviceLoader(images, labels, batch_size=batch_size, shuffle=False, dtype=torch.float64,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    out = {name: create_arch(arch, num_classes=10).double()
           for name, arch in (("teacher", "seed_vgg_teacher"), ("student", "seed_vgg_student"),
                              ("resnet", "resnet20"))}
    out["student_cl"] = create_arch("seed_vgg_student", num_classes=10).double().to(memory_format=torch.channels_last)
    return out


def test_measuring_together_gives_each_models_own_accuracy():
    data, nets = loader(), models()
    nets["resnet"].eval()  # each model is measured in eval mode and left in the mode it was in
    modes = {name: m.training for name, m in nets.items()}
    assert sorted(modes.values()) == [False, True, True, True]
    alone = {name: evaluate(m, data) for name, m in nets.items()}
    together = evaluate_all(nets, data)
    assert together == alone
    assert {name: m.training for name, m in nets.items()} == modes


def test_a_channels_last_model_gets_channels_last_input(monkeypatch):
    data, nets = loader(), models()
    seen = {}

    def watch(name, model):
        real = model.forward

        def forward(x, *args, **kwargs):
            seen.setdefault(name, set()).add(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return real(x, *args, **kwargs)
        monkeypatch.setattr(model, "forward", forward)

    for name in ("student", "student_cl"):
        watch(name, nets[name])
    evaluate_all({k: nets[k] for k in ("student", "student_cl")}, data)
    assert seen == {"student": {False}, "student_cl": {True}}

import math

import pytest
import torch
import torch.nn.functional as F

from mutualbench.methods.losses import cross_entropy, hint_loss, kd_loss, mutual_losses


def test_cross_entropy_matches_torch_both_reductions():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    assert torch.allclose(cross_entropy(logits, y, "sum"), F.cross_entropy(logits, y, reduction="sum"))
    assert torch.allclose(cross_entropy(logits, y, "mean"), F.cross_entropy(logits, y))


@pytest.mark.parametrize(
    "temperature,alpha,expected",
    [
        # s = [1, 0], t = [0, 1], y = 0.  CE = log(1 + e^-1) = 0.313262;
        # T=1: KL = (0.731059 - 0.268941) * 1 = 0.462117
        (1.0, 1.0, 0.313262 + 0.462117),
        # T=2: p_t = softmax([0, .5]), p_s = softmax([.5, 0]); KL = (0.622459 - 0.377541) * 0.5
        #      = 0.122459, times T^2 = 4 -> 0.489836
        (2.0, 1.0, 0.313262 + 0.489836),
        (2.0, 0.5, 0.313262 + 0.5 * 0.489836),
    ],
)
def test_kd_loss_hand_computed(temperature, alpha, expected):
    s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    assert kd_loss(s, t, y, temperature, alpha, "sum").item() == pytest.approx(expected, abs=1e-5)
    # two copies of the sample: the sum doubles, the mean does not
    s2, t2, y2 = s.repeat(2, 1), t.repeat(2, 1), y.repeat(2)
    assert kd_loss(s2, t2, y2, temperature, alpha, "sum").item() == pytest.approx(2 * expected, abs=1e-5)
    assert kd_loss(s2, t2, y2, temperature, alpha, "mean").item() == pytest.approx(expected, abs=1e-5)


def test_kd_loss_does_not_reach_the_teacher():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2]), 3.0).backward()
    assert t.grad is None and s.grad is not None


def reference_mutual(logits, y, w, reduction):
    """Explicit pairwise loops with torch's KL divergence."""
    k = logits.shape[0]
    out = []
    for i in range(k):
        ce = F.cross_entropy(logits[i], y, reduction="none")
        kl = sum(F.kl_div(F.log_softmax(logits[i], -1), F.log_softmax(logits[j], -1).detach(),
                          log_target=True, reduction="none").sum(-1) for j in range(k) if j != i)
        per = ce + w * kl
        out.append(per.sum() if reduction == "sum" else per.mean())
    return torch.stack(out)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("peer_weight", ["mean", "sum"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mutual_losses_match_pairwise_reference(k, peer_weight, reduction):
    torch.manual_seed(k)
    logits, y = torch.randn(k, 6, 4) * 2, torch.randint(0, 4, (6,))
    w = 1.0 / (k - 1) if peer_weight == "mean" else 1.0
    got = mutual_losses(logits, y, peer_weight, reduction)
    assert torch.allclose(got, reference_mutual(logits, y, w, reduction), atol=1e-5)


def test_mutual_loss_two_students_hand_computed():
    # p1 = softmax([1, 0]), p2 = softmax([0, 1]), y = 0: CE1 = 0.313262, CE2 = 1.313262,
    # KL(p2 || p1) = KL(p1 || p2) = 0.462117 (see the KD case).
    logits = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    got = mutual_losses(logits, torch.tensor([0]), "mean", "sum")
    assert got.tolist() == pytest.approx([0.313262 + 0.462117, 1.313262 + 0.462117], abs=1e-5)


def test_mutual_loss_peers_are_detached():
    logits = torch.randn(3, 4, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(mutual_losses(logits, torch.tensor([0, 1, 2, 3]))[0], logits)
    assert grad[1:].abs().max() == 0 and grad[0].abs().max() > 0


def test_hint_loss_hand_computed():
    g = torch.zeros(2, 1, 2, 2)
    r = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]], [[[3.0, 0.0], [0.0, 0.0]]]])
    # per image: 0.5 * (1 + 4) = 2.5 and 0.5 * 9 = 4.5
    assert hint_loss(g, r, "sum").item() == pytest.approx(7.0)
    assert hint_loss(g, r, "mean").item() == pytest.approx(3.5)
    assert not math.isnan(hint_loss(g, r).item())

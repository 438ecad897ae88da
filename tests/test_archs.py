import pytest
import torch

from mutualbench.archs import ARCHS, count_parameters, create_arch
from mutualbench.core.errors import UserError


def test_blog_parameter_counts_are_exact():
    assert count_parameters(create_arch("seed_vgg_teacher", 10)) == 2_440_394
    assert count_parameters(create_arch("seed_vgg_student", 10)) == 1_497_434


@pytest.mark.parametrize(
    "name,params",
    [("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018), ("resnet110", 1_727_962),
     ("wrn_40_2", 2_243_546), ("wrn_16_2", 691_674), ("wrn_28_10", 36_479_194)],
)
def test_reference_parameter_counts(name, params):
    # He et al. report 0.27M/0.46M/0.85M/1.7M; Zagoruyko & Komodakis 2.2M (40-2), 36.5M (28-10).
    assert count_parameters(create_arch(name)) == params


def test_guided_and_hint_taps_are_8x8_maps():
    teacher, student = create_arch("seed_vgg_teacher"), create_arch("seed_vgg_student")
    assert teacher.tap_names == ("G",) and student.tap_names == ("H",)
    assert teacher.tap_shape("G") == (128, 8, 8)
    assert student.tap_shape("H") == (64, 8, 8)


def test_forward_with_taps_matches_plain_forward_and_forward_to():
    torch.manual_seed(0)
    model = create_arch("seed_vgg_student").eval()
    x = torch.randn(2, 3, 32, 32)
    logits, feats = model(x, taps=("H",))
    assert torch.equal(logits, model(x))
    assert logits.shape == (2, 10)
    assert torch.equal(feats["H"], model.forward_to(x, "H"))


def test_parameters_up_to_hint_are_the_first_seven_convs():
    student = create_arch("seed_vgg_student")
    up_to = {id(p) for p in student.parameters_up_to("H")}
    convs = [m for m in student.modules() if isinstance(m, torch.nn.Conv2d)]
    expected = {id(p) for conv in convs[:7] for p in conv.parameters()}
    assert up_to == expected


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "wrn_22_1"])
def test_resnet_family_taps(name):
    model = create_arch(name, num_classes=100).eval()
    logits, feats = model(torch.randn(2, 3, 32, 32), taps=("layer1", "layer3"))
    assert logits.shape == (2, 100)
    assert feats["layer1"].shape[2:] == (32, 32) and feats["layer3"].shape[2:] == (8, 8)


def test_generic_parameters_up_to_leaves_batchnorm_statistics_alone():
    model = create_arch("resnet20")
    before = model.stages["stem"][1].running_mean.clone()
    from mutualbench.archs.base import FeatureModel

    params = list(FeatureModel.parameters_up_to(model, "layer1"))  # the autograd-based path
    assert {id(p) for p in params} == {id(p) for p in model.parameters_up_to("layer1")}
    assert torch.equal(model.stages["stem"][1].running_mean, before)


def test_timm_models_by_name_with_taps():
    model = create_arch("timm:resnet10t", num_classes=10).eval()
    assert "layer2" in model.tap_names
    logits, feats = model(torch.randn(2, 3, 32, 32), taps=("layer2",))
    assert logits.shape == (2, 10) and feats["layer2"].ndim == 4


def test_unknown_names_list_known_and_close_matches():
    with pytest.raises(UserError) as e:
        create_arch("seed_vgg_studnt")
    assert "seed_vgg_student" in str(e.value) and "Known:" in str(e.value)
    with pytest.raises(UserError, match="Did you mean timm:resnet18"):
        create_arch("timm:resnt18")
    with pytest.raises(UserError, match="6n\\+4"):
        create_arch("wrn_15_2")


def test_missing_tap_is_a_clear_error():
    with pytest.raises(UserError, match="has no feature tap 'G' \\(its taps: H\\)"):
        create_arch("seed_vgg_student")(torch.randn(1, 3, 32, 32), taps=("G",))


def test_registry_lists_every_family():
    families = {ARCHS.get(n).family for n in ARCHS.names()}
    assert families >= {"seed_vgg", "cifar_resnet", "wide_resnet"}
    assert ARCHS.names().index("resnet20") < ARCHS.names().index("resnet110")


def _logits(model, x):
    with torch.no_grad():
        out = model.train()(x)
    return out[0] if isinstance(out, tuple) else out


def test_he_normal_conv_draws_the_convolutions_as_he_fan_out_and_leaves_the_classifier_at_pytorchs_default():
    """``he_normal_conv`` (torchvision's ResNet init, the online-distillation authors'): from one
    seed, the same convolutions as ``he_normal_fan_out``, BatchNorm 1 and 0, and a classifier
    within PyTorch's default bound 1/sqrt(fan_in), where the fan-out draw has std sqrt(2/10)."""
    from mutualbench.archs import he_normal_conv, he_normal_fan_out

    torch.manual_seed(3)
    conv = he_normal_conv(create_arch("resnet32", 10))
    torch.manual_seed(3)
    fan_out = he_normal_fan_out(create_arch("resnet32", 10))
    a, b = conv.state_dict(), fan_out.state_dict()
    convs = [k for k, t in a.items() if t.ndim == 4]
    assert len(convs) == 31 and all(torch.equal(a[k], b[k]) for k in convs)
    bn = [m for m in conv.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == 31 and all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bn)
    head, head_he = conv.head[2], fan_out.head[2]
    bound = 1 / 64 ** 0.5
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound and head.bias.abs().sum() > 0
    assert float(head_he.weight.detach().std()) == pytest.approx((2 / 10) ** 0.5, rel=0.15) and not head_he.bias.any()


def test_a_cifar_resnets_own_init_starts_its_logits_several_times_larger_than_he_normal_conv():
    """Why the online-KD study draws its ResNets with ``he_normal_conv``: the ResNets' own init
    (the classifier He fan-out too) starts every seed's logits 3-5 times larger."""
    from mutualbench.archs import he_normal_conv

    for seed in range(4):
        torch.manual_seed(seed)
        x = torch.randn(64, 3, 32, 32)
        torch.manual_seed(100 + seed)
        own = _logits(create_arch("resnet32", 10), x).std()
        torch.manual_seed(100 + seed)
        small = _logits(he_normal_conv(create_arch("resnet32", 10)), x).std()
        assert own > 4 and small < 2 and own / small > 3, (seed, own, small)

"""The vision models: parameter counts of the literature, output shapes, ERK on ResNet-50 against
RigL's reference algorithm, and which weights the default recipe makes sparse."""
import math

import pytest
import torch

import gsparse
from gsparse.distributions import layer_densities
from gsparse.tasks.vision.models import MODEL_NAMES, build_model, cifar_resnet50, cifar_vgg19, resnet50, small_resnet

# torchvision.models.resnet50(): 25,557,032 parameters (torchvision's model card).
RESNET50_IMAGENET = 25_557_032
# The CIFAR ResNet-50 of the DST papers (kuangliu/pytorch-cifar's ResNet50, used by GraNet / ITOP /
# DST-EE): "23.5M" parameters in their tables; exactly ResNet-50 with a 3x3 stem (1,728 instead of
# 9,408 weights) and a 2048 -> 10 classifier: 25,557,032 - 7,680 - 2,028,510 = 23,520,842.
RESNET50_CIFAR10 = 23_520_842
# GraSP's VGG-19 (BN, bias-free convs, one Linear(512, 10)): "20.03M" in GraSP's Table (Wang et al.,
# 2020); 20,018,880 conv weights + 11,008 BN parameters + 5,130 classifier parameters.
VGG19_CIFAR10 = 20_035_018
SMALL_RESNET_DIGITS = 77_754


def count(model):
    return sum(p.numel() for p in model.parameters())


def sparse_candidates(model):
    """Names and shapes of all conv and linear weights, in model order."""
    return {f"{name}.weight": tuple(module.weight.shape) for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))}


@pytest.fixture(scope="module")
def imagenet_resnet50():
    torch.manual_seed(0)
    return resnet50()


def test_parameter_counts(imagenet_resnet50):
    assert count(imagenet_resnet50) == RESNET50_IMAGENET
    assert count(cifar_resnet50()) == RESNET50_CIFAR10
    assert count(cifar_resnet50(100)) == RESNET50_CIFAR10 + 2048 * 90 + 90
    assert count(cifar_vgg19()) == VGG19_CIFAR10
    assert count(small_resnet()) == SMALL_RESNET_DIGITS
    assert 10_000 < SMALL_RESNET_DIGITS < 100_000


def test_resnet50_is_v1_5_with_torchvision_names_and_init(imagenet_resnet50):
    block = imagenet_resnet50.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # stride on the 3x3 conv
    assert block.downsample[0].stride == (2, 2)
    assert {"conv1.weight", "bn1.weight", "layer4.2.bn3.weight", "layer1.0.downsample.0.weight",
            "fc.weight", "fc.bias"} <= set(imagenet_resnet50.state_dict())
    assert len(imagenet_resnet50.state_dict()) == 320  # torchvision's resnet50 state dict has 320 entries
    assert torch.all(imagenet_resnet50.layer1[0].bn3.weight == 1)
    conv = imagenet_resnet50.layer3[0].conv2.weight  # Kaiming normal, fan_out: std sqrt(2 / (256 * 9))
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)
    zeroed = resnet50(zero_init_residual=True)
    assert all(torch.all(getattr(zeroed, f"layer{i}")[j].bn3.weight == 0)
               for i, n in zip(range(1, 5), (3, 4, 6, 3)) for j in range(n))
    assert torch.all(zeroed.bn1.weight == 1)
    small = small_resnet(zero_init_residual=True)
    assert torch.all(small.layer2[0].bn2.weight == 0) and torch.all(small.layer2[0].bn1.weight == 1)


def test_cifar_models_structure():
    model = cifar_resnet50()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    vgg = cifar_vgg19()
    convs = [m for m in vgg.feature if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16 and all(c.bias is None for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in vgg.feature) == 16
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in vgg.feature) == 4
    assert (vgg.classifier.in_features, vgg.classifier.out_features) == (512, 10)


def test_forward_shapes(imagenet_resnet50):
    torch.manual_seed(0)
    with torch.no_grad():
        assert imagenet_resnet50.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
        assert cifar_resnet50(100).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert cifar_vgg19().eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = small_resnet()
    logits = small(torch.randn(4, 1, 8, 8))
    assert logits.shape == (4, 10)
    logits.sum().backward()  # trains: every parameter gets a gradient
    assert all(p.grad is not None for p in small.parameters())


def test_build_model_registry():
    assert MODEL_NAMES == ("resnet50", "cifar_resnet50", "cifar_vgg19", "small_resnet")
    model = build_model("small_resnet", 10, in_channels=1)
    assert count(model) == SMALL_RESNET_DIGITS
    assert build_model("small_resnet", 7, in_channels=3)(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    with pytest.raises(ValueError, match="allowed names: resnet50, cifar_resnet50, cifar_vgg19, small_resnet"):
        build_model("resnet18", 10)


def rigl_erk_reference(shapes, sparsity):
    """RigL's get_sparsities_erdos_renyi (erk_power_scale 1, no custom layers), written from
    /work/shared/NOTES-methods.md: solve eps over the non-dense layers, move every layer whose raw
    score is the maximum into the dense set while eps * max raw > 1, then density = eps * raw."""
    dense = set()
    while True:
        divisor = rhs = 0.0
        raw = {}
        for name, shape in shapes.items():
            n_params = math.prod(shape)
            n_zeros = math.floor(sparsity * n_params)
            if name in dense:
                rhs -= n_zeros
            else:
                rhs += n_params - n_zeros
                raw[name] = sum(shape) / n_params
                divisor += raw[name] * n_params
        eps = rhs / divisor
        max_prob = max(raw.values())
        if max_prob * eps <= 1:
            break
        dense |= {name for name, prob in raw.items() if prob == max_prob}
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


@pytest.mark.parametrize("sparsity", [0.8, 0.9])
def test_erk_on_resnet50_matches_rigl_reference(imagenet_resnet50, sparsity):
    shapes = sparse_candidates(imagenet_resnet50)
    assert len(shapes) == 54  # 53 convs (incl. 4 downsample) + fc
    densities = layer_densities(shapes, sparsity, "erk")
    expected = rigl_erk_reference(shapes, sparsity)
    assert list(densities) == list(shapes)
    for name in shapes:
        assert densities[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-15), name
        assert 0.0 < densities[name] <= 1.0
    # RigL's budget: each layer contributes numel - floor(sparsity * numel) active weights
    budget = sum(math.prod(s) - math.floor(sparsity * math.prod(s)) for s in shapes.values())
    active = sum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert active == pytest.approx(budget, rel=1e-9)
    assert densities["conv1.weight"] > densities["layer4.0.conv2.weight"]  # small layers denser
    # the re-solve loop runs: at 0.8 eight layers are forced dense (ties of equal shape together)
    assert sum(d == 1.0 for d in densities.values()) == {0.8: 8, 0.9: 1}[sparsity]


def sparsify(model, **params):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return gsparse.Sparsifier(model, optimizer, {"method": "static", "sparsity": 0.8, "distribution": "uniform",
                                                 "params": params})


def test_default_recipe_makes_exactly_conv_and_linear_weights_sparse():
    torch.manual_seed(0)
    model = small_resnet()
    candidates = list(sparse_candidates(model))
    assert candidates[0] == "conv1.weight" and candidates[-1] == "fc.weight"
    assert "layer2.0.downsample.0.weight" in candidates
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    sparsifier = sparsify(model)
    assert list(sparsifier.masks) == candidates
    dense = [name for name in before if name not in candidates]
    bn_or_bias = {f"{module_name}.{name}" for module_name, module in model.named_modules()
                  for name, _ in module.named_parameters(recurse=False)
                  if isinstance(module, torch.nn.BatchNorm2d) or name == "bias"}
    assert set(dense) == bn_or_bias and "fc.bias" in dense
    for name, param in model.named_parameters():
        if name in sparsifier.masks:
            mask = sparsifier.masks[name]
            assert int(mask.sum()) == int(0.2 * mask.numel() + 0.5), name
            assert torch.all(param[~mask] == 0) and torch.equal(param[mask], before[name][mask]), name
        else:
            assert torch.equal(param, before[name]), name


def test_dense_first_and_last_layer_options():
    torch.manual_seed(0)
    model = small_resnet()
    candidates = list(sparse_candidates(model))
    masks = sparsify(model, dense_first_layer=True, dense_last_layer=True).masks
    assert list(masks) == candidates[1:-1]
    assert torch.all(model.conv1.weight != 0) and torch.all(model.fc.weight != 0)
    assert list(sparsify(small_resnet(), dense_first_layer=True).masks) == candidates[1:]
    assert list(sparsify(small_resnet(), dense_last_layer=True).masks) == candidates[:-1]

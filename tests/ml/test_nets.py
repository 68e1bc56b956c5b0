import math

import pytest
import torch
import torch.nn.functional as F

from ml import ARCHITECTURES, architectures_for, build_model

IMAGE_ARCHS = architectures_for("image")

SHAPES = [(1, 8, 8), (3, 32, 32), (3, 64, 48), (3, 7, 5), (1, 1, 1)]


def make(arch, channels=3, height=32, width=32, num_classes=10):
    return build_model(
        arch, num_classes=num_classes, in_channels=channels, height=height, width=width,
        mean=[120.0] * channels, std=[60.0] * channels,
    )


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize(("channels", "height", "width"), SHAPES)
def test_every_arch_maps_uint8_images_of_any_size_to_logits(arch, channels, height, width):
    model = make(arch, channels, height, width, num_classes=5).eval()
    x = torch.randint(0, 256, (2, channels, height, width), dtype=torch.uint8)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 5)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_uint8_and_float_0_to_255_inputs_give_the_same_logits(arch):
    model = make(arch).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.float()))


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_initial_loss_is_about_log_num_classes(arch):
    torch.manual_seed(0)
    model = make(arch, num_classes=10).train()
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    loss = F.cross_entropy(model(x), y).item()
    assert abs(loss - math.log(10)) < 0.1, loss


def test_normalisation_is_part_of_the_saved_state():
    model = make("resnet", channels=3)
    state = model.state_dict()
    assert state["preprocess.mean"].flatten().tolist() == [120.0, 120.0, 120.0]
    assert state["preprocess.std"].flatten().tolist() == [60.0, 60.0, 60.0]


def test_model_carries_its_build_arguments():
    model = make("resnet")
    assert model.arch == "resnet"
    assert model.arch_args == ARCHITECTURES["resnet"].defaults


def test_arch_args_change_the_network():
    small = build_model("resnet", num_classes=3, in_channels=3, height=16, width=16,
                        mean=[0] * 3, std=[1] * 3, base_filters=8)
    assert small.arch_args == {"base_filters": 8}
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in make("resnet").parameters())


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown architecture 'vgg'. Choose one of: seed_cnn, resnet, seed_lstm, cnn_mel, crnn"):
        make("vgg")


def test_unknown_arch_argument_is_refused():
    with pytest.raises(ValueError, match="Unknown argument.*depth"):
        build_model("seed_cnn", num_classes=2, in_channels=1, height=8, width=8, mean=[0], std=[1], depth=3)


def test_mean_and_std_must_match_the_channels():
    with pytest.raises(ValueError, match="one value per input channel"):
        build_model("resnet", num_classes=2, in_channels=3, height=8, width=8, mean=[0], std=[1])

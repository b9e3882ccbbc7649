"""The optimiser pieces of the small-image recipe: Muon's orthogonalised steps and airbench's lookahead."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgclf.config import make_config
from imgclf.engines.lookahead import Lookahead
from imgclf.engines.optim import Muon, build_optimizer, orthogonalise, parameter_groups
from imgclf.models.small import FastNet


def test_orthogonalise_keeps_the_directions_and_evens_out_the_singular_values() -> None:
    update = torch.randn(16, 72, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 1, 72)
    for matrix in (update, update.T):  # wide and tall
        result = orthogonalise(matrix)
        assert result.shape == matrix.shape and result.dtype == matrix.dtype
        singular = torch.linalg.svdvals(result)
        assert singular.min() > 0.5 and singular.max() < 1.3  # the raw spread is 1000x
        assert torch.sum(result * matrix) > 0  # still a descent direction


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.slow
def test_muon_trains_the_filters_and_sgd_the_rest_and_the_loss_falls() -> None:
    net = tiny_net()
    head = net[-1]
    config = make_config(optimizer="muon", lr=0.2, muon_lr=0.05, momentum=0.85, weight_decay=0.0, bias_lr_scale=1.0)
    groups = parameter_groups(net, head, config, backbone_scale=1.0, trainable="all")
    optimizer = build_optimizer(groups, config)
    assert isinstance(optimizer, Muon)
    muon = [group for group in optimizer.param_groups if group["orthogonalise"]]
    assert [p.ndim for group in muon for p in group["params"]] == [4, 4] and muon[0]["lr"] == 0.05
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(64, 3, 8, 8, generator=generator)
    labels = (images[:, 0].mean((1, 2)) > 0).long() * 2 + (images[:, 1].mean((1, 2)) > 0).long()  # learnable
    shapes = [p.shape for p in net.parameters()]
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert [p.shape for p in net.parameters()] == shapes
    assert losses[-1] < 0.6 * losses[0]
    for parameter in (net[0].weight, net[2].weight):  # Muon keeps each filter bank at norm sqrt(out channels)
        assert abs(float(parameter.norm()) - 8**0.5) < 0.25


def test_lookahead_pulls_the_weights_every_five_steps_and_ends_on_the_slow_copy() -> None:
    net = nn.Linear(2, 1)
    lookahead = Lookahead(net)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    lookahead.step(net, 4, 0.4)  # not a fifth step: nothing moves
    torch.testing.assert_close(net.weight, start + 1)
    lookahead.step(net, 5, 0.5)  # the slow copy weighs 0.95^5 * (5/10)^3 ≈ 0.097
    decay = 0.95**5 * 0.5**3
    torch.testing.assert_close(net.weight, start + (1 - decay))
    torch.testing.assert_close(lookahead.state_dict()["weight"], net.weight)
    with torch.no_grad():
        net.weight.add_(1.0)
    lookahead.step(net, 10, 1.0)  # the last step: the model becomes the slow copy
    torch.testing.assert_close(net.weight, start + (1 - decay))


def test_the_bias_rate_scale_goes_to_norm_layers_only_and_no_bias_is_decayed() -> None:
    """airbench's 64x is for BatchNorm biases: fastnet's whitening bias keeps the base rate."""
    net = FastNet(10, widths=(8, 8, 8))
    config = make_config(data="x", optimizer="sgd", lr=0.5, weight_decay=1e-3, bias_lr_scale=64.0)
    groups = parameter_groups(net, net.get_classifier(), config, backbone_scale=1.0, trainable="all")
    settings = {id(parameter): (group["lr"], group["weight_decay"]) for group in groups for parameter in group["params"]}
    assert settings[id(net.whiten.bias)] == (0.5, 0.0)
    assert settings[id(net.groups[0].norms[0].bias)] == (32.0, 0.0)
    assert settings[id(net.groups[0].convs[0].weight)] == (0.5, 1e-3)
    assert id(net.groups[0].norms[0].weight) not in settings  # the BatchNorm scale is frozen at 1

"""The small-image recipe chosen from the data: airbench's pieces, and the width a time budget affords."""

from __future__ import annotations

import pytest

from imgclf.config import TrainConfig, make_config
from imgclf.recipes import DataFacts, resolve

CIFAR = DataFacts(45_000, 32)


def cifar_recipe(**options: object) -> TrainConfig:
    return resolve(make_config(data="x", **options), CIFAR, lambda name: None)


def test_small_images_get_airbench_lookahead_augmentation_tta_and_whitening_bias_freeze() -> None:
    config = cifar_recipe()
    assert (config.model, config.ema, config.lookahead, config.augment) == ("fastnet", False, True, "airbench")
    assert (config.tta, config.tta_shift) == (True, 1)
    assert config.whitening_bias_epochs == pytest.approx(0.3 * config.epochs, abs=0.01)
    assert config.warmup_epochs == pytest.approx(0.23 * config.epochs, abs=0.01)


def test_what_the_user_set_is_kept() -> None:
    config = cifar_recipe(ema=True, lookahead=False, augment="light", tta_shift=0, whitening_bias_epochs=2.0)
    assert (config.ema, config.lookahead, config.augment, config.tta_shift) == (True, False, "light", 0)
    assert config.whitening_bias_epochs == 2.0


@pytest.mark.parametrize(("budget", "widths"), [("5m", [32, 128, 128]), ("10m", [32, 128, 128]),
                                                ("20m", None), (None, None)])
def test_a_short_budget_trains_the_narrow_fastnet_and_a_long_one_airbench94s_width(budget: str | None,
                                                                                    widths: list[int] | None) -> None:
    assert cifar_recipe(time_budget=budget).model_args.get("widths") == widths


def test_widths_given_win_over_the_budget() -> None:
    assert cifar_recipe(time_budget="5m", model_args={"widths": [16, 32, 32]}).model_args["widths"] == [16, 32, 32]


def test_a_small_set_keeps_ema_light_shifts_and_flip_tta() -> None:
    """A few thousand images give too few steps for lookahead's end on the slow copy."""
    config = resolve(make_config(data="x"), DataFacts(2_000, 32), lambda name: None)
    assert (config.ema, config.lookahead, config.augment, config.tta_shift) == (True, False, "light", 0)
    assert config.whitening_bias_epochs is None


PHOTOS = DataFacts(3_000, 320)


def photo_recipe(**options: object) -> TrainConfig:
    return resolve(make_config(data="x", model="tf_efficientnet_lite0", **options), PHOTOS, lambda name: "package")


def test_a_probe_that_is_one_fit_is_one_epoch_and_gradient_descent_probes_keep_their_epochs() -> None:
    """The run's announcement and config.yaml said 20 epochs for a probe that trains one fit."""
    assert photo_recipe(strategy="probe").epochs == 1
    assert photo_recipe(strategy="probe", linear_probe=False).epochs == 4  # 12,000 images' worth, at least 4
    assert photo_recipe(strategy="probe", epochs=3).epochs == 3
    assert photo_recipe(strategy="two-stage").epochs == 4
    multilabel = resolve(make_config(data="x", model="tf_efficientnet_lite0", strategy="probe"),
                         DataFacts(3_000, 320, multilabel=True), lambda name: "package")
    assert multilabel.epochs == 1  # one fit per label
    fastnet = resolve(make_config(data="x", model="fastnet", strategy="probe", weights="w.safetensors"),
                      PHOTOS, lambda name: None)
    assert fastnet.epochs > 1  # FastNet's head has no bias: its probe is gradient descent

"""Ideal class images and feature maps with the real EfficientNet-Lite0 weights (offline, slower)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.pretrained


@pytest.fixture(scope="module")
def lite0():
    from transferkit.backbones import create_backbone

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread wastes far less CPU time on a busy 2-core machine
    yield create_backbone("efficientnet_lite0")
    torch.set_num_threads(before)


def test_zebra_grows_in_a_few_steps_and_is_smoother_than_the_noisy_version(lite0):
    from transferkit.explain import RenderConfig, plain_config, render_class_image

    config = RenderConfig(steps=24, seed=0)
    smooth = render_class_image(lite0, 340, config)
    noisy = render_class_image(lite0, 340, plain_config(config))
    assert smooth.probability > 0.9 and smooth.top[0][0] == 340
    assert noisy.probability > 0.9
    assert noisy.tv > 3 * smooth.tv


def test_feature_maps_of_a_cat_photo(lite0, chelsea_path):
    from transferkit.explain.featuremaps import extract_feature_maps, list_layers, load_image_for

    layers = list_layers(lite0)
    assert [info.role for info in layers] == ["stem"] + ["stage"] * 7 + ["head"]
    assert layers[0].shape == (32, 112, 112) and layers[-1].shape == (1280, 7, 7)
    maps = extract_feature_maps(lite0, load_image_for(lite0, chelsea_path), 0, channels=16)
    assert len(maps.channels) == 16 and maps.scores[0] > 0

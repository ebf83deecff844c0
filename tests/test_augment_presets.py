"""The training augmentation follows the method (issue 16 item 1): the official SEED code's mocov2_aug,
simclr_aug and swav_aug (tools/utils.py), picked by the teacher's method for a distillation run and by
the run's own method for pre-training, overridable by `data.augment`, honoured by both loaders."""

from __future__ import annotations

import pytest
import torch

from seedrun.data.augment import normalize
from seedrun.data.formats import check_settings
from seedrun.data.loader import open_split
from seedrun.data.presets import PRESETS, resolve
from seedrun.sweeps.compose import compose_config
from conftest import TINY_BASE


def test_presets_are_the_official_codes_values():
    # transcribed from jacobswan1/SEED tools/utils.py
    mocov2, swav, simclr = PRESETS["mocov2"], PRESETS["swav"], PRESETS["simclr"]
    assert mocov2 == {"crop_scale": [0.2, 1.0], "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_p": 0.8, "grayscale_p": 0.2,
                      "blur_p": 0.5, "blur_sigma": [0.1, 2.0], "flip": True, "grayscale_first": False}
    assert swav == {**mocov2, "crop_scale": [0.14, 1.0]}
    assert simclr == {"crop_scale": [0.2, 1.0], "jitter": [0.4, 0.4, 0.4, 0.4], "jitter_p": 1.0, "grayscale_p": 0.2,
                      "blur_p": 0.0, "blur_sigma": [0.1, 2.0], "flip": True, "grayscale_first": True}


def test_auto_follows_the_method_and_recipe_keys_override_it():
    assert resolve({"preset": "auto"}, "swav")["crop_scale"] == [0.14, 1.0]
    assert resolve({"preset": "auto"}, "simclr")["blur_p"] == 0.0
    assert resolve({}, None)["preset"] == "mocov2"  # a split opened outside training: MoCo-v2's, as before
    assert resolve({"preset": "simclr"}, "swav")["preset"] == "simclr"  # an explicit preset wins over the method
    assert resolve({"preset": "auto", "crop_scale": [0.5, 1.0]}, "swav")["crop_scale"] == [0.5, 1.0]
    with pytest.raises(ValueError, match="method 'byol'"):
        resolve({"preset": "auto"}, "byol")


def test_bad_augment_settings_name_the_key():
    assert check_settings({"augment": {"preset": "byol"}})[0] == "data.augment.preset"
    assert check_settings({"augment": {"preset": "auto", "blur": 0.5}})[0] == "data.augment.blur"
    assert check_settings({"augment": {"jitter_p": 1.5}})[0] == "data.augment.jitter_p"
    assert check_settings({"augment": {"crop_scale": [0.5, 2.0]}})[0] == "data.augment.crop_scale"
    assert check_settings({"augment": {"preset": "swav", "crop_scale": [0.3, 1.0]}}) is None
    assert check_settings({"augment_on": "tpu"})[0] == "data.augment_on"
    assert check_settings({"augment_on": "gpu"}) is None


def _tiny(*overrides: str) -> dict:
    return compose_config(TINY_BASE + ["data.train_subset=40", "data.test_subset=20", *overrides])["data"]


def test_memory_loader_applies_the_methods_augmentation(monkeypatch):
    import seedrun.data.loader as loader

    seen = []
    real = loader.augment
    monkeypatch.setattr(loader, "augment", lambda images, config, *args, **kw: seen.append(config) or real(
        images, config, *args, **kw))
    for method in ("mocov2", "simclr", "swav"):
        data = open_split(_tiny("data.augment.crop_scale=null"), "train", method=method)
        next(iter(data.batches(0, 20, {0: None}).epoch(0))).view(0)
        assert seen[-1] == {**PRESETS[method], "preset": method}


def test_blur_is_mocov2s_and_not_simclrs():
    # No jitter, no grayscale, the same order: MoCo-v2's and SimCLR's views then draw the same crops and
    # differ only by the blur, which MoCo-v2's augmentation applies to about half of the images and
    # SimCLR's (official simclr_aug) to none. 64 px, so that the blur (sigma x 64/224) shows.
    from seedrun.data.augment import augment

    images = torch.randint(0, 256, (20, 3, 64, 64), dtype=torch.uint8)
    same = {"jitter_p": 0.0, "grayscale_p": 0.0, "grayscale_first": False}
    views = {method: augment(images, resolve(same, method), 64, (0.5,) * 3, (0.25,) * 3,
                             torch.Generator().manual_seed(3)) for method in ("mocov2", "simclr")}
    blurred = (views["mocov2"] - views["simclr"]).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert 3 <= int(blurred.sum()) <= 17


def test_recipe_keys_are_nulls_that_a_sweep_overrides():
    # the data recipes list every key as null (the preset's value), so `data.augment.blur_p=0` composes
    data = open_split(_tiny("data.augment.crop_scale=null"), "train", method="swav")
    assert data.data_cfg["augment"]["crop_scale"] == [0.14, 1.0]
    data = open_split(_tiny("data.augment.blur_p=0", "data.augment.preset=simclr"), "train", method="swav")
    assert data.data_cfg["augment"] == {**PRESETS["simclr"], "crop_scale": [0.5, 1.0], "blur_p": 0, "preset": "simclr"}


def test_stream_draws_follow_each_presets_transforms():
    # the stream loader draws as the official transforms do (tests/test_loader_augment.py compares whole
    # views with the official pipelines); here each preset's own settings reach the draws
    from seedrun.data.draws import Drawer, seeded

    def views(method, count=400):
        drawer = Drawer(resolve({"preset": "auto"}, method), 224)
        out = []
        for seed in range(count):
            with seeded(seed):
                out.append(drawer.draw(500, 375))
        return out

    mocov2, simclr, swav = views("mocov2"), views("simclr"), views("swav")
    assert all(v.sigma is None and v.jitter and v.gray_first for v in simclr)  # no blur; ColorJitter always
    assert max(abs(v.factors[3]) for v in simclr) > 0.3  # hue strength 0.4
    assert not any(v.gray_first for v in mocov2) and 0 < sum(v.sigma is not None for v in mocov2) < 400
    smallest = {name: min(v.box[2] * v.box[3] for v in draws) / (500 * 375)
                for name, draws in (("mocov2", mocov2), ("swav", swav))}
    assert 0.19 <= smallest["mocov2"] < 0.25 and 0.13 <= smallest["swav"] < 0.19  # crop scale 0.2 / 0.14


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stage, teacher, expected", [("distill", "small_resnet_swav", "swav"),
                                                      ("distill", "small_resnet_simclr", "simclr"),
                                                      ("pretrain", "small_resnet_simclr", "simclr")])
def test_recipes_pass_the_method_that_picks_the_preset(stage, teacher, expected, monkeypatch, tmp_path):
    # distillation: the teacher's method (official main.py: augmentation by args.teacher_ssl);
    # pre-training: the run's own pretrain.method
    import importlib

    from seedrun.sweeps.spec import pretrain_config
    from seedrun.training.loop import Hooks

    module = importlib.import_module(f"seedrun.training.{stage}")
    seen = []

    def spy(data_cfg, split, data_root=None, log=print, method=None):
        seen.append((split, method))
        raise _Stop

    monkeypatch.setattr(module, "open_split", spy)
    config = compose_config(["data=tiny", f"teacher={teacher}", "threads=1"])
    with pytest.raises(_Stop):
        if stage == "distill":
            module.distill(config, tmp_path, Hooks(), None)
        else:
            module.pretrain(pretrain_config(config), tmp_path, Hooks())
    assert seen == [("train", expected)]


def test_simclr_jitter_changes_every_image_and_grayscale_comes_first():
    # simclr_aug: grayscale, then ColorJitter applied always. With grayscale p=1, jitter on a grey image
    # keeps it grey; MoCo-v2's order (grayscale last) also ends grey, so compare the intensities instead:
    # jittered-then-grey differs from grey-then-jittered for the same draws.
    from seedrun.data.augment import augment

    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    base = {"crop_scale": [1.0, 1.0], "flip": False, "grayscale_p": 1.0, "blur_p": 0.0, "jitter_p": 1.0,
            "jitter": [0.4, 0.4, 0.4, 0.4]}
    first = augment(images, {"preset": "simclr", **base}, 16, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(1))
    last = augment(images, {"preset": "simclr", **base, "grayscale_first": False}, 16, (0.5,) * 3, (0.25,) * 3,
                   torch.Generator().manual_seed(1))
    assert torch.allclose(first[:, 0], first[:, 1], atol=1e-5) and torch.allclose(first[:, 1], first[:, 2], atol=1e-5)
    assert not torch.allclose(first, last, atol=1e-3)
    plain = normalize(images, (0.5,) * 3, (0.25,) * 3)
    assert ((first - plain).abs().amax(dim=(1, 2, 3)) > 1e-2).all()  # jitter p=1 (official: not RandomApply)


def test_memory_crops_fit_the_image_as_torchvisions():
    # torchvision's RandomResizedCrop redraws a crop that does not fit and falls back to the whole image;
    # scale (1, 1) therefore gives the image itself (aspect 1 is the only one that fits), not a clamped
    # rectangle, and scale near 1 keeps the requested area
    from seedrun.data.augment import crop_and_flip

    x = torch.rand(16, 3, 24, 24)
    same = crop_and_flip(x, (1.0, 1.0), False, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-5)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(64, 1, 32, 32)  # a crop's mean x-extent shows its width
    crop = crop_and_flip(ramp.contiguous(), (0.9, 1.0), False, torch.Generator().manual_seed(1))
    widths = crop.amax(dim=(1, 2, 3)) - crop.amin(dim=(1, 2, 3))
    assert (widths > 0.89).all()  # a crop of area >= 0.9 that fits is >= 0.9 wide; clamping gave 0.85

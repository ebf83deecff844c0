"""The stream loader's CPU augmentation against the official code's own (issue 22 item 2): each Pillow
operation equals torchvision's PIL one, a whole view equals the official mocov2_aug / simclr_aug /
swav_aug pipeline for the same seed, the drawn parameters follow the official distributions, and a
reduced-scale decode is used only where every crop keeps its output size."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from seedrun.data import pillow_ops as ops
from seedrun.data.draws import Drawer, seeded
from seedrun.data.presets import resolve


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour fields plus noise: saturated and grey areas, every hue sector."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noise = rng.integers(-10, 11, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(small, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _spread(image: Image.Image) -> np.ndarray:
    array = ops.to_array(image)
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


@pytest.mark.parametrize("factor", [0.6, 0.77, 1.0, 1.23, 1.4])
def test_each_operation_equals_torchvisions_pil_operation(factor):
    import torchvision.transforms.functional as TF

    image = _photo(61, 47)
    assert np.array_equal(np.asarray(ops.brightness(image, factor)), np.asarray(TF.adjust_brightness(image, factor)))
    assert np.array_equal(np.asarray(ops.contrast(image, factor)), np.asarray(TF.adjust_contrast(image, factor)))
    assert np.array_equal(np.asarray(ops.saturation(image, factor)), np.asarray(TF.adjust_saturation(image, factor)))
    shift = (factor - 1) / 4  # -0.1 .. 0.1, MoCo-v2's hue range
    assert np.array_equal(np.asarray(ops.hue(image, shift)), np.asarray(TF.adjust_hue(image, shift)))
    grey = ops.grayscale(image, _params(gray=True))
    assert grey.mode == "L" and np.array_equal(_spread(grey), np.asarray(TF.rgb_to_grayscale(image, 3)))
    # a grey view stays one band through the later jitter: the same as jittering the 3-channel grey image
    grey3 = TF.rgb_to_grayscale(image, 3)
    for op, reference in ((ops.brightness, TF.adjust_brightness), (ops.contrast, TF.adjust_contrast),
                          (ops.saturation, TF.adjust_saturation), (ops.hue, TF.adjust_hue)):
        amount = shift if op is ops.hue else factor
        assert np.array_equal(_spread(op(grey, amount)), np.asarray(reference(grey3, amount))), op.__name__
    sigma = 0.1 + factor
    assert np.array_equal(np.asarray(ops.blur(image, _params(sigma=sigma))),
                          np.asarray(image.filter(ImageFilter.GaussianBlur(radius=sigma))))
    assert np.array_equal(np.asarray(ops.flip(image, _params(flip=True))), np.asarray(TF.hflip(image)))
    box = (5, 9, 30, 41)
    assert np.array_equal(np.asarray(ops.crop(image, box, 24, image.size)),
                          np.asarray(TF.resized_crop(image, *box, [24, 24])))


def test_brightness_and_contrast_tables_equal_pillows_blend_for_every_value():
    import torchvision.transforms.functional as TF

    every = Image.fromarray(np.arange(256 * 3, dtype=np.uint16).reshape(16, 16, 3).astype(np.uint8))
    for factor in np.random.default_rng(0).uniform(0.6, 1.4, 200):
        factor = float(factor)
        assert np.array_equal(np.asarray(ops.brightness(every, factor)), np.asarray(TF.adjust_brightness(every, factor)))
        assert np.array_equal(np.asarray(ops.contrast(every, factor)), np.asarray(TF.adjust_contrast(every, factor)))


def _params(**kw):
    from seedrun.data.draws import ViewParams

    return ViewParams(box=(0, 0, 1, 1), **kw)


class _MocoBlur:
    """MoCo's GaussianBlur (PIL's filter), sigma drawn from torch's generator instead of Python's random,
    the one change seedrun makes to the official draws (same U(0.1, 2) distribution)."""

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=float(torch.empty(1).uniform_(0.1, 2.0))))


def official(method: str, size: int):
    """SEED tools/utils.py's augmentation for `method`, minus ToTensor and Normalize."""
    from torchvision import transforms as T

    if method == "simclr":  # MoCo-v1's
        return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), T.RandomGrayscale(p=0.2),
                          T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomHorizontalFlip()])
    scale = (0.14, 1.0) if method == "swav" else (0.2, 1.0)
    return T.Compose([T.RandomResizedCrop(size, scale=scale),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                      T.RandomApply([_MocoBlur()], p=0.5), T.RandomHorizontalFlip()])


def ours(raw: bytes, method: str, size: int, seed: int, mode: str = "RGB") -> np.ndarray:
    """The stream loader's view: what ImageStream.train_views does for one view."""
    aug = resolve({}, method)
    image = ops.open_image(raw)
    full = image.size
    with seeded(seed):
        params = Drawer(aug, 224).draw(*full)
    decoded = ops.decode(image, mode, ops.reduction(image, [(params, size)]))
    return _spread(ops.augment(ops.crop(decoded, params.box, size, full), params, aug["grayscale_first"]))


@pytest.mark.parametrize("method", ["mocov2", "simclr", "swav"])
def test_a_view_is_the_official_pipelines_for_the_same_seed(method):
    # at most a crop of 1.9 x the output size fits these images, so the decode is never reduced: the
    # stream loader's view must then be the official pipeline's, pixel for pixel
    reference = official(method, 48)
    seen = set()
    for seed in range(40):
        picture = _photo(*[(90, 70), (64, 91), (80, 80)][seed % 3], seed=seed)
        raw = _jpeg(picture) if seed % 2 else _png(picture)  # a PNG: never a reduced decode
        torch.manual_seed(seed)
        expected = np.asarray(reference(Image.open(io.BytesIO(raw)).convert("RGB")))
        got = ours(raw, method, 48, seed)
        assert got.shape == expected.shape == (48, 48, 3)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, (method, seed)
        seen.add(bool((got == got[:, :, :1]).all()))  # grey views and colour views both met
    assert seen == {True, False}


def test_drawing_leaves_torchs_generator_where_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with seeded(123):
        Drawer(resolve({}, "mocov2"), 224).draw(500, 375)
    assert torch.equal(torch.rand(3), expected)


def test_a_reduced_decode_only_where_every_crop_keeps_its_output_size():
    picture = _photo(1000, 800)
    image = ops.open_image(_jpeg(picture))
    from seedrun.data.draws import ViewParams

    big, small = ViewParams(box=(0, 0, 700, 900)), ViewParams(box=(0, 0, 300, 500))  # top, left, height, width
    assert ops.reduction(image, [(big, 160)]) == 4  # 700 / 4 = 175 >= 160; / 8 would be 87
    assert ops.reduction(image, [(big, 160), (small, 160)]) == 1  # the 300 px crop needs full scale
    assert ops.reduction(image, [(big, 300)]) == 2
    assert ops.reduction(ops.open_image(_png(picture)), [(big, 32)]) == 1  # only JPEGs decode smaller
    decoded = ops.decode(ops.open_image(_jpeg(picture)), "RGB", 4)
    assert decoded.size == (250, 200)
    full = ops.decode(ops.open_image(_jpeg(picture)), "RGB", 1)
    box = (100, 60, 640, 720)
    reduced_view = np.asarray(ops.crop(decoded, box, 160, picture.size), dtype=float)
    full_view = np.asarray(ops.crop(full, box, 160, picture.size), dtype=float)
    assert np.abs(reduced_view - full_view).mean() < 2.0  # the same view, from a quarter of the pixels


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_drawn_parameters_follow_the_official_distributions():
    n = 4000
    drawer = Drawer(resolve({}, "mocov2"), 224)
    draws = []
    for seed in range(n):
        with seeded(seed):
            draws.append(drawer.draw(500, 375))

    def share(values, p):  # within 4.5 standard deviations of a binomial share
        assert abs(np.mean(values) - p) < 4.5 * math.sqrt(p * (1 - p) / len(values)), (np.mean(values), p)

    share([d.jitter for d in draws], 0.8)
    share([d.gray for d in draws], 0.2)
    share([d.sigma is not None for d in draws], 0.5)
    share([d.flip for d in draws], 0.5)
    sigmas = np.array([d.sigma for d in draws if d.sigma is not None])
    assert 0.1 <= sigmas.min() < 0.15 and 1.95 < sigmas.max() <= 2.0
    assert abs(sigmas.mean() - 1.05) < 0.05 and abs(np.median(sigmas) - 1.05) < 0.08  # uniform on [0.1, 2]
    jittered = [d for d in draws if d.jitter]
    factors = np.array([d.factors for d in jittered], dtype=float)
    assert (factors[:, :3] >= 0.6).all() and (factors[:, :3] <= 1.4).all()
    assert (np.abs(factors[:, 3]) <= 0.1).all() and abs(factors[:, 3].mean()) < 0.01
    assert np.abs(factors[:, :3].mean(axis=0) - 1.0).max() < 0.02
    orders = {d.order for d in jittered}
    assert orders == set(itertools.permutations(range(4)))  # every order of the four operations
    # crops: the quartiles of area and aspect match those of torchvision's RandomResizedCrop run on a
    # real 500x375 PIL image with other seeds (large crops that do not fit are redrawn: median area 0.48)
    from torchvision import transforms as T

    picture = Image.new("RGB", (500, 375))
    reference = []
    for seed in range(n):
        torch.manual_seed(10 ** 6 + seed)
        reference.append(T.RandomResizedCrop.get_params(picture, [0.2, 1.0], [3 / 4, 4 / 3]))

    def quartiles(boxes):
        areas = np.array([h * w / (500 * 375) for _, _, h, w in boxes])
        aspects = np.array([w / h for _, _, h, w in boxes])
        assert areas.min() >= 0.19 and areas.max() <= 1.0 and aspects.min() >= 0.74 and aspects.max() <= 1.34
        return np.quantile(areas, [0.25, 0.5, 0.75]), np.quantile(aspects, [0.25, 0.5, 0.75])

    (our_areas, our_aspects), (their_areas, their_aspects) = quartiles([d.box for d in draws]), quartiles(reference)
    assert np.abs(our_areas - their_areas).max() < 0.03 and np.abs(our_aspects - their_aspects).max() < 0.03
    simclr = Drawer(resolve({}, "simclr"), 224)
    with seeded(1):
        view = simclr.draw(500, 375)
    assert view.jitter and view.sigma is None and view.gray_first  # simclr_aug: jitter always, no blur


def test_crop_boxes_are_torchvisions_for_the_same_generator():
    # seedrun draws the box with torchvision's calls in its order (not get_params itself, for speed):
    # the same boxes, including the central fallback of images too narrow or too wide for every draw
    from torchvision import transforms as T

    for name in ("mocov2", "swav"):
        drawer, scale = Drawer(resolve({}, name), 224), list(resolve({}, name)["crop_scale"])
        for seed in range(300):
            for width, height in ((500, 375), (60, 400), (400, 60), (224, 224), (17, 13)):
                torch.manual_seed(seed)
                ours = drawer.crop(width, height)
                torch.manual_seed(seed)
                theirs = T.RandomResizedCrop.get_params(torch.empty((0, height, width)), scale, [3 / 4, 4 / 3])
                assert ours == tuple(theirs), (name, seed, width, height)

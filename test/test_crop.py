"""Upstream-faithful person crops on real photos."""
import numpy as np
import pytest
from skimage import data

from sam3d_body_ros.core.crop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    box_to_center_side,
    prepare_crops,
    validate_boxes,
    warp_matrix,
)
from sam3d_body_ros.core.errors import InputError


def test_center_side_follows_padding_and_aspect_rules():
    # tall box: side = 1.25 * h ; wide box: side = 1.25 * w / 0.75
    c, s = box_to_center_side(np.array([[100, 50, 200, 450], [0, 0, 300, 100]], float))
    np.testing.assert_allclose(c, [[150, 250], [150, 50]])
    np.testing.assert_allclose(s, [1.25 * 400, 1.25 * 300 / 0.75])


def test_crop_samples_the_box_region_of_a_real_photo():
    img = data.astronaut()  # 512x512 RGB
    box = np.array([[120.0, 40.0, 360.0, 500.0]])
    b = prepare_crops(img, box)
    assert b.images.shape == (1, 3, 512, 512) and b.image_size == (512, 512)
    m = b.affine[0].double().numpy()
    # the box centre lands on the crop centre, and the side maps to 512 px
    np.testing.assert_allclose(m @ [240, 270, 1], [256, 256], atol=1e-4)
    np.testing.assert_allclose(m[0, 0] * b.side[0].item(), 512, rtol=1e-6)
    # un-normalise and compare a crop pixel with the image pixel it came from (integer-aligned sample)
    rgb = (b.images[0].permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN) * 255
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    for u, v in [(256, 256), (100, 300), (400, 120)]:
        x, y, _ = inv @ [u, v, 1]
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        ref = ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x0 + 1]
               + (1 - fx) * fy * img[y0 + 1, x0] + fx * fy * img[y0 + 1, x0 + 1])
        np.testing.assert_allclose(rgb[v, u], ref, atol=1.5)


def test_border_is_black_after_normalisation():
    img = data.astronaut()
    b = prepare_crops(img, np.array([[0.0, 0.0, 60.0, 200.0]]))  # crop extends past the left/top edge
    corner = b.images[0, :, 0, 0].numpy()
    np.testing.assert_allclose(corner, -IMAGENET_MEAN / IMAGENET_STD, atol=1e-5)


def test_batch_of_persons_is_independent():
    img = data.astronaut()
    boxes = np.array([[120.0, 40.0, 360.0, 500.0], [10.0, 300.0, 90.0, 480.0]])
    both = prepare_crops(img, boxes)
    for i in range(2):
        one = prepare_crops(img, boxes[i : i + 1])
        assert np.array_equal(both.images[i].numpy(), one.images[0].numpy())


@pytest.mark.parametrize(
    "box, reason",
    [([10, 10, 10, 50], "zero or negative size"), ([50, 50, 20, 80], "zero or negative size"),
     ([np.nan, 0, 10, 10], "NaN"), ([600, 10, 700, 80], "outside"), ([-90, -90, -10, -10], "outside"),
     ([-5000, 0, 100, 100], "image diagonals")],
)
def test_bad_boxes_are_named(box, reason):
    valid, reasons = validate_boxes(np.array([box], float), 512, 512)
    assert not valid[0] and reason in reasons[0]


def test_bad_images_rejected():
    with pytest.raises(InputError, match="HxWx3"):
        prepare_crops(data.camera(), np.array([[0, 0, 10, 10.0]]))
    with pytest.raises(InputError, match="uint8"):
        prepare_crops(data.astronaut().astype(np.float32), np.array([[0, 0, 10, 10.0]]))


def test_empty_box_list_gives_empty_batch():
    b = prepare_crops(data.astronaut(), np.zeros((0, 4)))
    assert b.images.shape == (0, 3, 512, 512) and b.affine.shape == (0, 2, 3)


def test_warp_matrix_is_similarity_without_udp_shift():
    m = warp_matrix(np.array([100.0, 200.0]), 256.0, 512)
    np.testing.assert_allclose(m, [[2, 0, 256 - 200], [0, 2, 256 - 400]])


def test_gpu_warp_path_matches_opencv():
    """The warp used on CUDA computes OpenCV's crop (run here on the CPU through the same code)."""
    import torch

    from sam3d_body_ros.core.crop import _warp_cv2, _warp_torch

    img = data.astronaut()
    boxes = np.array([[120.0, 40.0, 360.0, 500.0], [0.0, 0.0, 60.0, 200.0], [400.0, 300.0, 512.0, 512.0],
                      [10.3, 20.7, 90.9, 130.2]])
    center, side = box_to_center_side(boxes)
    affines = np.stack([warp_matrix(c, s, 512) for c, s in zip(center, side)])
    ref = _warp_cv2(img, affines, 512)
    got = _warp_torch(torch.from_numpy(img), affines, 512)
    # the same uint8 crops, normalised in float32 by two formulas: at most an ulp or two apart
    assert (ref - got).abs().max() < 1e-5
    # the zero border matches too (outside the image both give normalised black)
    np.testing.assert_allclose(got[1, :, 0, 0].numpy(), (-IMAGENET_MEAN / IMAGENET_STD), atol=1e-5)


def test_crop_stage_matches_opencv_across_frames_sizes_and_person_counts():
    """The CUDA crop stage (one uploaded frame buffer, one wrapped warp per crop size), run here on the CPU with the
    pipeline's runner (batch buckets, chunks above 8): OpenCV's crops for every frame, whatever came before."""
    import torch

    from sam3d_body_ros.core.crop import CropStage, _warp_cv2
    from sam3d_body_ros.runtime.cuda_graph import BucketedRunner

    stage = CropStage("cpu", lambda warp: BucketedRunner(warp))
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.astronaut()]  # frame shape changes, then back
    rng = np.random.default_rng(0)
    kept = []
    for i, (img, n) in enumerate(zip(photos, [3, 1, 10, 2])):  # 10: two chunks of the 8-bucket runner
        h, w = img.shape[:2]
        x1, y1 = rng.uniform(-0.2, 0.7, n) * w, rng.uniform(-0.2, 0.7, n) * h
        boxes = np.stack([x1, y1, x1 + rng.uniform(5, w, n), y1 + rng.uniform(5, h, n)], 1)
        center, side = box_to_center_side(boxes)
        size = 64 if i == 1 else 96
        affines = np.stack([warp_matrix(c, s, size) for c, s in zip(center, side)])
        crops, frame = stage(img, affines, size)
        assert torch.equal(frame, torch.from_numpy(img))
        assert (crops - _warp_cv2(img, affines, size)).abs().max() < 1e-5  # same uint8 crops, normalised
        kept.append((crops.clone(), crops))
    assert all(torch.equal(a, b) for a, b in kept)  # no call overwrote an earlier call's crops
    empty, _ = stage(data.coffee(), np.zeros((0, 2, 3)), 64)
    assert empty.shape == (0, 3, 64, 64)

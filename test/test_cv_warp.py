"""The torch warp equals cv2.warpAffine (INTER_LINEAR, BORDER_CONSTANT 0) bit for bit on real photos."""
import cv2
import numpy as np
import pytest
import torch
from skimage import data

from sam3d_body_ros.core.crop import box_to_center_side, warp_matrix
from sam3d_body_ros.core.cv_warp import fixed_point_tables, invert_affine, warp_affine_linear

PHOTOS = {
    "astronaut": data.astronaut(),  # 512x512
    "camera": np.repeat(data.camera()[..., None], 3, axis=2),  # 512x512 grey -> 3 channels
    "coffee": data.coffee(),  # 400x600
    "chelsea": data.chelsea(),  # 300x451
}

# Boxes as fractions of (W, H, W, H), plus two in pixels (tiny and awkwardly placed).
BOXES = {
    "inside": [0.2, 0.15, 0.7, 0.9],
    "left": [-0.1, 0.2, 0.3, 0.8],
    "right": [0.7, 0.1, 1.15, 0.6],
    "top": [0.3, -0.2, 0.6, 0.4],
    "bottom": [0.25, 0.6, 0.55, 1.3],
    "larger_than_image": [-0.3, -0.2, 1.4, 1.25],
    "wide": [0.05, 0.4, 0.95, 0.6],
}
PIXEL_BOXES = {"tiny_3x5": [100.37, 80.37, 103.37, 85.37], "fractional": [37.37, 21.63, 211.11, 250.89]}


def _boxes(img: np.ndarray) -> dict[str, np.ndarray]:
    h, w = img.shape[:2]
    out = {k: np.array(v) * [w, h, w, h] for k, v in BOXES.items()}
    out.update({k: np.array(v, dtype=np.float64) for k, v in PIXEL_BOXES.items()})
    return out


def _affine(box: np.ndarray, size: int) -> np.ndarray:
    center, side = box_to_center_side(box[None])
    return warp_matrix(center[0], side[0], size)


def _opencv(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _ours(img: np.ndarray, affines: np.ndarray, size: int, device: str = "cpu") -> np.ndarray:
    out = warp_affine_linear(torch.from_numpy(img).to(device), affines, size)
    assert out.dtype == torch.uint8 and out.shape == (len(affines), 3, size, size)
    return out.permute(0, 2, 3, 1).cpu().numpy()  # (N,S,S,3) like OpenCV


def _assert_same(ours: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() == 0, f"{np.count_nonzero(diff)} of {diff.size} values differ, max {diff.max()}"


@pytest.mark.parametrize("size", [512, 64])
@pytest.mark.parametrize("box_name", [*BOXES, *PIXEL_BOXES])
@pytest.mark.parametrize("photo", list(PHOTOS))
def test_package_crops_match_opencv_exactly(photo: str, box_name: str, size: int) -> None:
    img = PHOTOS[photo]
    m = _affine(_boxes(img)[box_name], size)
    ref = _opencv(img, m, size)
    assert ref.any()  # every box overlaps the photo: the comparison is not between two black squares
    _assert_same(_ours(img, m[None], size)[0], ref)


def _general_affines(img: np.ndarray, size: int = 512) -> dict[str, np.ndarray]:
    """Rotations, shears, a mirror and exact-tie translations, scaled so a size x size output sees the photo."""
    h, w = img.shape[:2]
    affines = {
        "rotate_scale": cv2.getRotationMatrix2D((w * 0.43, h * 0.61), 33.3, 0.71),
        "rotate_upscale": cv2.getRotationMatrix2D((w / 2 + 0.37, h / 2 - 0.21), -121.0, 2.37),
        "shear": np.array([[0.9, 0.35, -40.2], [-0.2, 1.1, 13.7]]),
        "mirror_shear": np.array([[-0.77, 0.12, 420.5], [0.31, 0.64, -60.25]]),
        "downscale": np.array([[0.093, 0.0, 3.3], [0.0, 0.117, 1.9]]),
        "integer_shift": np.array([[1.0, 0.0, -37.0], [0.0, 1.0, 12.0]]),  # taps exactly on pixels
        # offsets of exactly half a 1/1024 px step: cvRound's half-to-even decides these
        "tie_shift": np.array([[1.0, 0.0, 3 + 1 / 2048], [0.0, 1.0, -2 - 3 / 2048]]),
    }
    return {k: m * (size / 512) for k, m in affines.items()}


@pytest.mark.parametrize("size", [512, 64, 100])
@pytest.mark.parametrize("name", list(_general_affines(PHOTOS["astronaut"])))
@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
def test_general_affines_match_opencv_exactly(photo: str, name: str, size: int) -> None:
    img = PHOTOS[photo]
    m = _general_affines(img, size)[name]
    ref = _opencv(img, m, size)
    assert ref.any()
    _assert_same(_ours(img, m[None], size)[0], ref)


def test_inverse_is_opencvs_closed_form() -> None:
    # cv::invertAffineTransform uses the same double formula as cv::warpAffine's internal inversion.
    img = PHOTOS["coffee"]
    ms = [*_general_affines(img).values(), *(_affine(b, 512) for b in _boxes(img).values())]
    ours = invert_affine(np.stack(ms))
    for m, inv in zip(ms, ours):
        assert np.array_equal(inv, cv2.invertAffineTransform(m))


def _batch(img: np.ndarray, size: int) -> np.ndarray:
    return np.stack([_affine(b, size) for b in _boxes(img).values()] + list(_general_affines(img).values()))


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_batch_of_boxes_in_one_call(photo: str) -> None:
    img = PHOTOS[photo]
    affines = _batch(img, 512)
    ours = _ours(img, torch.from_numpy(affines), 512)  # affines may also come as a tensor
    for i, m in enumerate(affines):
        _assert_same(ours[i], _opencv(img, m, 512))


def test_empty_batch() -> None:
    out = warp_affine_linear(torch.from_numpy(PHOTOS["astronaut"]), np.zeros((0, 2, 3)), 64)
    assert out.shape == (0, 3, 64, 64) and out.dtype == torch.uint8


@pytest.mark.parametrize("size", [512, 100])
def test_coordinate_tables_equal_opencvs_double_arithmetic(size: int) -> None:
    """The float64 torch tables equal WarpAffineInvoker's per-row / per-column sums, written here in numpy as
    OpenCV's C++ evaluates them (a product, then a sum, each rounded; cvRound = half to even)."""
    img = PHOTOS["coffee"]
    inv = invert_affine(_batch(img, size))
    y = np.arange(size, dtype=np.float64)
    expect = np.empty((len(inv), 2, 2, size), np.int64)
    for i, a in enumerate(inv):
        for j in range(2):  # X then Y
            expect[i, j, 0] = np.rint((a[j, 1] * y + a[j, 2]) * 1024.0).astype(np.int64) + 16  # + ROUND_DELTA
            expect[i, j, 1] = np.rint(a[j, 0] * y * 1024.0).astype(np.int64)
    got = fixed_point_tables(torch.from_numpy(inv), size)
    assert got.dtype == torch.int32 and np.array_equal(got.numpy(), expect)


def test_compiled_remap_used_on_cuda_gives_the_same_bits() -> None:
    """The torch.compile'd integer remap (what runs on CUDA) equals the eager one, here compiled for the CPU."""
    from sam3d_body_ros.core.cv_warp import _remap_compiled, remap_fixed_point

    img = torch.from_numpy(PHOTOS["chelsea"])
    affines = np.stack([_affine(b, 64) for b in _boxes(PHOTOS["chelsea"]).values()])
    tables = fixed_point_tables(torch.from_numpy(invert_affine(affines)), 64)
    assert torch.equal(_remap_compiled(img, tables), remap_fixed_point(img, tables))

"""Message conversions: stride-aware image decode for every encoding, CameraInfo -> K, detections -> boxes."""
import numpy as np
import pytest
import skimage.data
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from sam3d_body_ros.core.errors import InputError
from sam3d_body_ros.ros.conversions import (
    array_to_image,
    boxes_to_detections,
    camera_info_to_K,
    detections_to_boxes,
    image_to_array,
    image_to_rgb,
)

RGB = skimage.data.astronaut()[::4, ::4][:97, :75]  # odd width: padding really matters


def _encoded(encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(array in `encoding`, the RGB image the node should decode it to)."""
    gray = (RGB.astype(np.float64) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)
    if encoding == "rgb8":
        return RGB, RGB
    if encoding == "bgr8":
        return RGB[:, :, ::-1].copy(), RGB
    if encoding == "rgba8":
        return np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)]), RGB
    if encoding == "bgra8":
        return np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)]), RGB
    if encoding in ("mono8", "8UC1"):
        return gray, np.repeat(gray[:, :, None], 3, axis=2)
    wide = gray.astype(np.uint16) * 257  # full 16-bit range; scaled back to 8 bit exactly
    return wide, np.repeat(gray[:, :, None], 3, axis=2)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "mono16", "16UC1"])
@pytest.mark.parametrize("padding", [0, 5, 64])
def test_padded_rows_decode_for_every_encoding(encoding, padding):
    arr, expected = _encoded(encoding)
    msg = array_to_image(arr, encoding, row_padding=padding)
    bpp = arr.itemsize * (arr.shape[2] if arr.ndim == 3 else 1)
    assert msg.step == arr.shape[1] * bpp + padding
    # Garbage in the padding bytes must not leak into the image.
    data = bytearray(msg.data)
    for r in range(msg.height):
        data[r * msg.step + arr.shape[1] * bpp:(r + 1) * msg.step] = b"\xff" * padding
    msg.data = bytes(data)
    np.testing.assert_array_equal(image_to_array(msg).reshape(arr.shape), arr)
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == RGB.shape
    np.testing.assert_array_equal(out, expected)


def test_big_endian_mono16_decodes():
    wide = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = array_to_image(wide, "mono16")
    msg.data = wide.astype(">u2").tobytes()
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_to_array(msg)[:, :, 0], wide)


def test_bad_images_are_rejected():
    msg = array_to_image(RGB, "rgb8")
    msg.encoding = "yuv422"
    with pytest.raises(InputError, match="unsupported image encoding"):
        image_to_rgb(msg)
    msg = array_to_image(RGB, "rgb8")
    msg.step = RGB.shape[1] * 3 - 1
    with pytest.raises(InputError, match="step"):
        image_to_rgb(msg)
    msg = array_to_image(RGB, "rgb8", row_padding=8)
    msg.data = msg.data[:-1]
    with pytest.raises(InputError, match="bytes"):
        image_to_rgb(msg)


def _info(k):
    return CameraInfo(width=640, height=480, k=[float(v) for v in k])


def test_camera_info_to_K():
    K = camera_info_to_K(_info([500, 0, 320, 0, 510, 240, 0, 0, 1]))
    np.testing.assert_array_equal(K, [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    assert K.dtype == np.float64  # checked once per frame by the pipeline (test_camera: resolve_intrinsics)


def test_detections_parse_with_class_filter_threshold_and_cap():
    header = Header(frame_id="cam")
    boxes = np.array([[10, 20, 110, 220], [200, 10, 260, 90], [5, 5, 50, 50], [300, 40, 400, 300]], float)
    msg = boxes_to_detections(boxes, header, ids=["a", "b", "c", "d"], scores=np.array([0.9, 0.4, 0.8, 0.7]))
    msg.detections[2].results[0].hypothesis.class_id = "car"
    # A second, better hypothesis of another class must not hide the person hypothesis when filtering.
    extra = type(msg.detections[0].results[0])()
    extra.hypothesis.class_id, extra.hypothesis.score = "dog", 0.99
    msg.detections[3].results.append(extra)

    every = detections_to_boxes(msg)
    np.testing.assert_allclose(every.boxes, boxes)
    assert every.ids == ["a", "b", "c", "d"] and every.class_ids == ["person", "person", "car", "dog"]

    persons = detections_to_boxes(msg, frozenset({"person"}), score_threshold=0.5)
    assert persons.ids == ["a", "d"] and persons.class_ids == ["person", "person"]
    np.testing.assert_allclose(persons.scores, [0.9, 0.7])
    np.testing.assert_allclose(persons.boxes, boxes[[0, 3]])
    assert persons.rejected == 2

    capped = detections_to_boxes(msg, frozenset({"person", "car"}), max_persons=2)
    assert capped.ids == ["a", "c"]  # two best scores, input order kept

    empty = detections_to_boxes(boxes_to_detections(np.zeros((0, 4)), header))
    assert empty.boxes.shape == (0, 4) and empty.ids == []


def test_detection_without_hypotheses_and_nan_score():
    msg = boxes_to_detections(np.array([[0, 0, 10, 10], [0, 0, 20, 20]], float), Header())
    msg.detections[0].results.clear()
    msg.detections[1].results[0].hypothesis.score = float("nan")
    out = detections_to_boxes(msg)
    assert out.ids == ["0"] and out.class_ids == [""] and out.scores.tolist() == [1.0]

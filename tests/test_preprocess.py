import numpy as np
import pytest

from tinybridge import preprocess


def test_resize_gray_float_to_rgb():
    img = np.linspace(0, 1, 25 * 25).reshape(25, 25)
    out = preprocess.resize(img, (128, 128, 3))
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert (out[:, :, 0] == out[:, :, 2]).all()
    assert out[0, 0, 0] < 20 and out[-1, -1, 0] > 235


def test_resize_rgb_to_gray_uses_luma():
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :, 1] = 200
    out = preprocess.resize(img, (10, 10, 1))
    assert out.shape == (10, 10, 1) and abs(int(out[5, 5, 0]) - round(200 * 0.587)) <= 1


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.int32), "uint8 or float"),
    (np.full((4, 4), 2.0), r"\[0, 1\]"),
    (np.zeros((4, 4, 2), np.uint8), "got \\(4, 4, 2\\)"),
])
def test_resize_rejects_what_it_cannot_convert(bad, message):
    with pytest.raises(ValueError, match=message):
        preprocess.resize(bad, (8, 8, 3))


def test_input_tensor_is_pixel_minus_128_and_names_the_expected_shape():
    x = preprocess.input_tensor(np.array([[0, 128, 255]], np.uint8), (1, 3, 1))
    assert x.dtype == np.int8 and x.reshape(-1).tolist() == [-128, 0, 127]
    with pytest.raises(ValueError, match=r"expects \(2, 3, 1\) or \(2, 3\)"):
        preprocess.input_tensor(np.zeros((3, 3), np.uint8), (2, 3, 1))
    with pytest.raises(ValueError, match="numpy.uint8"):
        preprocess.input_tensor(np.zeros((2, 3), np.float32), (2, 3, 1))

"""YuNet on real AFLW2000 photos: faces, landmarks, empty results, input checks."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from fsanet.core.errors import FsanetError, InputError
from fsanet.faces.vision.detect import YuNet

pytestmark = pytest.mark.real


def photo(shared: Path, number: int) -> np.ndarray:
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        data = z.read(f"AFLW2000/image{number:05d}.jpg")
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def yunet(shared: Path) -> YuNet:
    return YuNet()


def test_finds_the_face_with_landmarks_inside_its_box(yunet: YuNet, shared: Path) -> None:
    faces = yunet.detect(photo(shared, 2))
    assert len(faces) == 1 and faces[0].score > 0.9
    x, y, w, h = faces[0].box
    marks = faces[0].landmarks
    assert marks is not None and marks.shape == (5, 2)
    assert ((marks >= [x, y]) & (marks <= [x + w, y + h])).all()
    assert marks[0, 0] < marks[1, 0]  # the subject's right eye is on the image's left


def test_no_face_is_an_empty_list(yunet: YuNet) -> None:
    assert yunet.detect(np.full((300, 400, 3), 127, np.uint8)) == []


def test_large_images_are_scaled_for_the_detector_and_back(shared: Path) -> None:
    image = photo(shared, 2)
    small = YuNet().detect(image)[0]
    big = YuNet(max_side=450).detect(cv2.resize(image, (900, 900)))[0]
    np.testing.assert_allclose(big.box, np.array(small.box) * 2, atol=8)


def test_grayscale_and_bgra_are_accepted(yunet: YuNet, shared: Path) -> None:
    image = photo(shared, 2)
    assert len(yunet.detect(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))) == 1
    assert len(yunet.detect(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))) == 1


def test_bad_input_is_a_user_error(yunet: YuNet) -> None:
    with pytest.raises(InputError, match="dtype float32"):
        yunet.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputError, match="numpy BGR image"):
        yunet.detect("photo.jpg")  # type: ignore[arg-type]
    with pytest.raises(FsanetError, match="score threshold"):
        YuNet(score_threshold=1.5)


def test_threads_share_one_detector_safely(yunet: YuNet, shared: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    photos = [photo(shared, n) for n in (2, 4, 6, 8, 10, 13)] * 4
    serial = [yunet.detect(p) for p in photos]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(yunet.detect, photos))
    assert [[d.box for d in ds] for ds in parallel] == [[d.box for d in ds] for ds in serial]


def frames(shared: Path, clip: str, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(shared / "videos" / clip))
    try:
        return [capture.read()[1] for _ in range(count)]
    finally:
        capture.release()


def test_onnxruntime_finds_the_faces_opencv_finds(yunet: YuNet, shared: Path) -> None:
    # Our decoding and NMS against OpenCV's own FaceDetectorYN, on the same model file.
    opencv = YuNet(runtime="opencv")
    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))[::50]
        photos = [cv2.imdecode(np.frombuffer(z.read(n), np.uint8), cv2.IMREAD_COLOR) for n in names]
    images = photos + frames(shared, "classroom.mp4", 12)
    faces = 0
    for image in images:
        ours, theirs = yunet.detect(image), opencv.detect(image)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)  # type: ignore[arg-type]
            assert abs(a.score - b.score) < 1e-5
        faces += len(ours)
    assert faces > len(images)  # the classroom frames have 7 faces each


def test_the_thread_count_may_change_between_calls(shared: Path) -> None:
    detector = YuNet(threads=1)
    image = photo(shared, 2)
    one = detector.detect(image)
    detector.threads = 2
    assert [d.box for d in detector.detect(image)] == [d.box for d in one]


@pytest.mark.parametrize("runtime", ["onnxruntime", "opencv"])
def test_a_file_that_is_not_yunet_is_a_clear_error(tmp_path: Path, runtime: str) -> None:
    bad = tmp_path / "yunet.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(FsanetError, match="cannot be loaded as a YuNet model"):
        YuNet(bad, runtime=runtime)
    with pytest.raises(FsanetError, match="unknown detector runtime"):
        YuNet(bad, runtime="tflite")


def test_an_onnx_model_without_yunet_outputs_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["cls_8"])],
        "not-yunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("cls_8", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    model = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), model)
    with pytest.raises(FsanetError, match="is not a YuNet model: it has no output"):
        YuNet(model)

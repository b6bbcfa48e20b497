import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from fsanet.assets.aflw2000 import (
    build_aflw2000,
    landmark_crop_box,
    load_aflw2000,
    prepare_aflw2000,
)
from fsanet.assets.fetch import fetch
from fsanet.assets.zoo import AFLW2000_ZIP
from fsanet.core.errors import DatasetError


@pytest.fixture(scope="module")
def release(shared: Path) -> Path:
    return fetch(AFLW2000_ZIP)


def _subset_folder(release: Path, dest: Path, count: int) -> list[str]:
    """Extract the first `count` image pairs of the release into dest/AFLW2000."""
    with zipfile.ZipFile(release) as archive:
        mats = sorted(n for n in archive.namelist() if n.endswith(".mat"))[:count]
        for mat in mats:
            for member in (mat, mat.removesuffix(".mat") + ".jpg"):
                archive.extract(member, dest)
    return mats


def test_the_set_has_fsanet_shape(aflw2000):
    assert aflw2000.images.shape == (2000, 64, 64, 3) and aflw2000.images.dtype == np.uint8
    assert aflw2000.poses.shape == (2000, 3)
    subset = aflw2000.evaluation_subset()
    assert len(subset) == 1969
    assert np.abs(subset.poses).max() <= 99.0


def test_first_crop_follows_the_type1_recipe_by_hand(aflw2000, release):
    with zipfile.ZipFile(release) as archive:
        mat = scipy.io.loadmat(io.BytesIO(archive.read("AFLW2000/image00002.mat")))
        jpg = np.frombuffer(archive.read("AFLW2000/image00002.jpg"), np.uint8)
    image = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
    x, y = mat["pt2d"]
    x, y = x[x > 0], y[x > 0]  # every point of this image is inside it
    w, h = int(x.max()) - int(x.min()), int(y.max()) - int(y.min())
    x0, x1 = max(int(int(x.min()) - 0.6 * w), 0), min(int(int(x.max()) + 0.6 * w), 449)
    y0, y1 = max(int(int(y.min()) - 0.6 * h), 0), min(int(int(y.max()) + 0.6 * h), 449)
    expected = cv2.resize(image[y0:y1, x0:x1], (64, 64))
    np.testing.assert_array_equal(aflw2000.images[0], expected)
    pitch, yaw, roll = mat["Pose_Para"][0][:3] * 180 / np.pi
    np.testing.assert_allclose(aflw2000.poses[0], [yaw, pitch, roll], rtol=1e-6)


def test_landmark_box_drops_points_outside_with_the_smaller_mask():
    pts = np.array([[10.0, 20.0, 30.0, -5.0], [10.0, 20.0, -1.0, -1.0]])
    # x > 0 keeps 3 points, y > 0 keeps 2: the y-mask wins, so the box is (10..20) widened.
    assert landmark_crop_box(pts, 100, 100) == (4, 4, 26, 26)
    assert landmark_crop_box(np.array([[1.0, 99.0], [1.0, 99.0]]), 100, 100) == (0, 0, 99, 99)


def test_folder_and_zip_give_the_same_crops(release, aflw2000, tmp_path):
    _subset_folder(release, tmp_path, 5)
    data, names = build_aflw2000(tmp_path)
    assert names == ["image00002", "image00004", "image00006", "image00008", "image00010"]
    np.testing.assert_array_equal(data.images, aflw2000.images[:5])
    np.testing.assert_array_equal(data.poses, aflw2000.poses[:5])


def test_fsanet_npz_is_accepted(aflw2000, tmp_path):
    path = tmp_path / "AFLW2000.npz"
    np.savez(path, image=aflw2000.images[:10], pose=aflw2000.poses[:10], img_size=64)
    assert prepare_aflw2000(path) == path
    assert len(load_aflw2000(path)) == 10


def test_truncated_zip_is_a_clear_error_and_leaves_no_npz(release, tmp_path):
    broken = tmp_path / "AFLW2000-3D.zip"
    broken.write_bytes(release.read_bytes()[:20_000_000])
    output = tmp_path / "out.npz"
    with pytest.raises(DatasetError, match="truncated or damaged") as e:
        prepare_aflw2000(broken, output=output)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AFLW2000-3D.zip"]


def test_mat_without_pose_para_is_named(release, tmp_path):
    (mat_name,) = _subset_folder(release, tmp_path, 1)
    mat_path = tmp_path / mat_name
    contents = scipy.io.loadmat(mat_path)
    scipy.io.savemat(mat_path, {"pt2d": contents["pt2d"]})
    with pytest.raises(DatasetError, match=r"image00002.mat has no 'Pose_Para'"):
        build_aflw2000(tmp_path)


def test_npz_without_image_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, pose=np.zeros((3, 3)))
    with pytest.raises(DatasetError, match="has no 'image' array"):
        load_aflw2000(path)


def test_npz_that_is_not_an_npz(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable npz"):
        load_aflw2000(path)


def test_missing_source(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        build_aflw2000(tmp_path / "nope.zip")

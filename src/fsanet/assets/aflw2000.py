"""AFLW2000 as FSA-Net tests on it: 64x64 BGR crops and [yaw, pitch, roll] labels.

The crops follow FSA-Net's "type1" recipe (`data/type1/TYY_create_db_type1.py`): the box of
the positive 2D landmarks, widened by 0.6 of its size on each side, clipped, cropped from
the BGR image and resized to 64x64 with OpenCV's default bilinear interpolation.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from fsanet.assets.fetch import fetch
from fsanet.assets.type1 import crop_box
from fsanet.assets.zoo import AFLW2000_ZIP, INPUT_SIZE
from fsanet.core import progress
from fsanet.core.errors import DatasetError, FsanetError
from fsanet.core.files import atomic_path, ensure_dir, home_dir, remove_stale_temps

EVAL_ANGLE_LIMIT = 99.0  # FSA-Net evaluates the images whose three angles lie in [-99, 99]
_MAT_NAME = re.compile(r"(^|/)image\d+\.mat$")


@dataclass(frozen=True)
class Aflw2000:
    """Crops (uint8 N x 64 x 64 x 3, BGR) and labels (float N x 3: yaw, pitch, roll in degrees)."""

    images: np.ndarray
    poses: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def evaluation_subset(self, limit: float = EVAL_ANGLE_LIMIT) -> Aflw2000:
        """The images FSA-Net evaluates on: all three angles within [-limit, limit] (1969)."""
        keep = np.all(np.abs(self.poses) <= limit, axis=1)
        return Aflw2000(self.images[keep], self.poses[keep])


def landmark_crop_box(pt2d: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """FSA-Net's type1 box (x0, y0, x1, y1) from the 2 x K landmarks of one image."""
    xs, ys = pt2d[0], pt2d[1]
    # AFLW2000 has negative coordinates for landmarks outside the image: FSA-Net drops them
    # using the x-mask or the y-mask, whichever keeps fewer points.
    keep_x, keep_y = xs > 0.0, ys > 0.0
    keep = keep_y if keep_x.sum() > keep_y.sum() else keep_x
    xs, ys = xs[keep], ys[keep]
    # Whole-pixel corners before widening, as FSA-Net's script.
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return crop_box(box, width, height)


def pose_from_mat(mat: dict, name: str) -> np.ndarray:
    """[yaw, pitch, roll] in degrees from `Pose_Para` = [pitch, yaw, roll, ...] in radians."""
    if "Pose_Para" not in mat:
        raise DatasetError(f"{name} has no 'Pose_Para': not an AFLW2000-3D annotation file")
    para = np.asarray(mat["Pose_Para"], dtype=np.float64).ravel()
    if para.size < 3:
        raise DatasetError(f"{name}: 'Pose_Para' has {para.size} values, expected at least 3")
    pitch, yaw, roll = para[:3] * 180.0 / np.pi
    return np.array([yaw, pitch, roll])


def _crop_one(jpg: bytes, mat_bytes: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        mat = scipy.io.loadmat(io.BytesIO(mat_bytes))
    except Exception as e:  # scipy raises several types for a damaged file
        raise DatasetError(f"{name}.mat cannot be read ({e}): the release is damaged") from e
    if "pt2d" not in mat:
        raise DatasetError(f"{name}.mat has no 'pt2d' landmarks: not an AFLW2000-3D file")
    pose = pose_from_mat(mat, f"{name}.mat")
    image = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{name}.jpg cannot be decoded: the release is damaged")
    height, width = image.shape[:2]
    x0, y0, x1, y1 = landmark_crop_box(np.asarray(mat["pt2d"], np.float64), width, height)
    crop = cv2.resize(image[y0:y1, x0:x1], (INPUT_SIZE, INPUT_SIZE))
    return crop, pose


def _members(source: Path) -> Iterator[tuple[str, bytes, bytes]]:
    """Yield (name, jpg bytes, mat bytes) in sorted file order from a zip or a folder."""
    if source.is_dir():
        folder = source / "AFLW2000" if (source / "AFLW2000").is_dir() else source
        mats = sorted(folder.glob("image*.mat"))
        if not mats:
            raise DatasetError(f"{folder} holds no image*.mat files: not the AFLW2000-3D release")
        for mat in mats:
            jpg = mat.with_suffix(".jpg")
            if not jpg.is_file():
                raise DatasetError(f"{jpg} is missing: the release is incomplete")
            yield mat.stem, jpg.read_bytes(), mat.read_bytes()
        return
    try:
        with zipfile.ZipFile(source) as archive:
            mats = sorted(n for n in archive.namelist() if _MAT_NAME.search(n))
            if not mats:
                raise DatasetError(f"{source} holds no image*.mat files: not AFLW2000-3D")
            for mat in mats:
                stem = mat.removesuffix(".mat")
                yield stem.rsplit("/", 1)[-1], archive.read(stem + ".jpg"), archive.read(mat)
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DatasetError(
            f"{source} is not a readable zip ({e}): it is truncated or damaged; fetch it again"
        ) from e
    except KeyError as e:
        raise DatasetError(f"{source}: {e.args[0]}: the release is incomplete") from e


def build_aflw2000(source: str | Path) -> tuple[Aflw2000, list[str]]:
    """Build the 64x64 test set from the AFLW2000-3D release (its zip or extracted folder)."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"{source} does not exist: give the AFLW2000-3D zip or its folder")
    images, poses, names = [], [], []
    with progress.bar(total=2000, desc="AFLW2000 crops", unit="img") as bar:
        for name, jpg, mat in _members(source):
            crop, pose = _crop_one(jpg, mat, name)
            images.append(crop)
            poses.append(pose)
            names.append(name)
            bar.update()
    return Aflw2000(np.stack(images), np.stack(poses).astype(np.float32)), names


def default_npz_path() -> Path:
    return home_dir() / "datasets" / "aflw2000_type1.npz"


def save_npz(data: Aflw2000, names: list[str], path: Path) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, image=data.images, pose=data.poses, name=np.array(names), img_size=INPUT_SIZE)
    return path


def prepare_aflw2000(
    source: str | Path | None = None,
    mirror: str | Path | None = None,
    output: str | Path | None = None,
) -> Path:
    """Return the path of a 64x64 AFLW2000 npz, building it if needed.

    With no source, the pinned AFLW2000-3D release is fetched (mirror first) and the
    result cached; an existing npz (ours or FSA-Net's `AFLW2000.npz`) is used as it is.
    """
    if source is not None and str(source).endswith(".npz"):
        load_aflw2000(source)  # validate
        return Path(source)
    target = Path(output) if output else default_npz_path()
    if source is None:
        if target.is_file():
            try:
                load_aflw2000(target)
                return target
            except DatasetError:
                target.unlink()  # a damaged cache entry: build it again
        source = fetch(AFLW2000_ZIP, mirror)
    ensure_dir(target.parent)  # fail before the minutes of cropping, not after
    if output is None:
        remove_stale_temps(target.parent)  # what killed runs left in the cache
    data, names = build_aflw2000(source)
    return save_npz(data, names, target)


def load_aflw2000(path: str | Path | None = None, mirror: str | Path | None = None) -> Aflw2000:
    """Load a 64x64 AFLW2000 npz (keys `image` and `pose`), preparing the default if needed."""
    if path is None or not str(path).endswith(".npz"):
        path = prepare_aflw2000(path, mirror)
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist: run `fsanet dataset` or pass the release")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("image", "pose") if k not in npz.files]
            if missing:
                raise DatasetError(
                    f"{path} has no {' or '.join(repr(k) for k in missing)} array: "
                    "expected an FSA-Net AFLW2000 npz with 'image' and 'pose'"
                )
            images, poses = npz["image"], npz["pose"]
    except FsanetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path} is not a readable npz ({e}): build it again") from e
    if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise DatasetError(f"{path}: 'image' has shape {images.shape}, expected N x 64 x 64 x 3")
    if poses.shape != (len(images), 3):
        raise DatasetError(f"{path}: 'pose' has shape {poses.shape}, expected {len(images)} x 3")
    return Aflw2000(images.astype(np.uint8, copy=False), poses.astype(np.float32))

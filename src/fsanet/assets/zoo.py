"""The model registry: one explicit dict of FSA-Net variants and the files we fetch."""

from __future__ import annotations

from dataclasses import dataclass

from fsanet.core.errors import FsanetError

FSANET_COMMIT = "4361d0e48103bb215d15734220c9d17e6812bb48"
_FSANET_TF_URL = (
    f"https://raw.githubusercontent.com/shamangary/FSA-Net/{FSANET_COMMIT}"
    "/pre-trained/converted-models/tf/"
)

# Every graph takes NHWC float32 BGR pixels 0-255 and returns [yaw, pitch, roll] in degrees.
INPUT_NAME = "input_1"
OUTPUT_NAME = "pred_pose/mul_24"
INPUT_SIZE = 64
AXES = ("yaw", "pitch", "roll")
FUSION = "fusion"


@dataclass(frozen=True)
class RemoteFile:
    """A file we download: its public URL, pinned sha256, and where a mirror keeps it."""

    name: str
    url: str
    sha256: str
    mirror_path: str  # relative path inside a mirror directory laid out like ../shared
    size: int | None = None

    @property
    def filename(self) -> str:
        return self.mirror_path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class PaperResult:
    """AFLW2000 MAE in degrees, FSA-Net paper Table 1."""

    yaw: float
    pitch: float
    roll: float
    mae: float


@dataclass(frozen=True)
class Variant:
    """One FSA-Net pretrained graph."""

    name: str
    description: str
    file: RemoteFile
    paper: PaperResult
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    input_shape: tuple[int | None, int, int, int] = (None, INPUT_SIZE, INPUT_SIZE, 3)
    layout: str = "NHWC, BGR, float32 pixel values 0-255, no normalisation"


def _graph(filename: str, sha256: str) -> RemoteFile:
    return RemoteFile(
        name=filename.removesuffix(".pb"),
        url=_FSANET_TF_URL + filename,
        sha256=sha256,
        mirror_path=f"models/fsanet/{filename}",
    )


VARIANTS: dict[str, Variant] = {
    "capsule": Variant(
        "capsule",
        "FSA-Net with the 1x1 conv scoring function",
        _graph(
            "fsanet_capsule_3_16_2_21_5.pb",
            "95d12028571084c6bf8f97825272e1f3324e075627024854fe1e584bd4b6dae1",
        ),
        PaperResult(4.82, 6.19, 4.76, 5.25),
    ),
    "var": Variant(
        "var",
        "FSA-Net with the variance scoring function",
        _graph(
            "fsanet_var_capsule_3_16_2_21_5.pb",
            "f9760f6d2a378de625d511337ec75e8400f02d2615e9713ca4e154b5d61fefb1",
        ),
        PaperResult(4.96, 6.34, 4.78, 5.36),
    ),
    "noS": Variant(
        "noS",
        "FSA-Net without a scoring function",
        _graph(
            "fsanet_noS_capsule_3_16_2_192_5.pb",
            "96600aa7939b9ac027fab0531b823f933f80390e45f736ac939444ebdbd5c9e4",
        ),
        PaperResult(5.27, 6.71, 5.28, 5.75),
    ),
}

# The mean of the three variants' outputs.
FUSION_PAPER = PaperResult(4.50, 6.08, 4.64, 5.07)

AFLW2000_ZIP = RemoteFile(
    name="aflw2000-3d",
    url="http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/Database/AFLW2000-3D.zip",
    sha256="50d7b9d83af33f4a4c3aeccd47236ea5aad0617c9e287dae5f3f9311268cbe55",
    mirror_path="datasets/AFLW2000-3D.zip",
    size=48469321,
)

YUNET = RemoteFile(
    name="yunet",
    url="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
    "face_detection_yunet_2026may.onnx",
    sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
    mirror_path="models/yunet/face_detection_yunet_2026may.onnx",
    size=229738,
)

# Everything `fsanet fetch` knows, by name.
FILES: dict[str, RemoteFile] = {
    **{v.name: v.file for v in VARIANTS.values()},
    AFLW2000_ZIP.name: AFLW2000_ZIP,
    YUNET.name: YUNET,
}


def get_variant(name: str) -> Variant:
    """Find a variant by its short name or its file name (with or without `.pb`)."""
    for variant in VARIANTS.values():
        if name.lower() in (
            variant.name.lower(),
            variant.file.filename.lower(),
            variant.file.name.lower(),
        ):
            return variant
    known = ", ".join([*VARIANTS, FUSION])
    raise FsanetError(f"unknown model '{name}': choose one of {known}")


def resolve_variants(names: list[str] | tuple[str, ...] | None) -> list[Variant]:
    """Turn model names into variants; `fusion` (or nothing) means all three."""
    if not names:
        return list(VARIANTS.values())
    out: list[Variant] = []
    for name in names:
        chosen = list(VARIANTS.values()) if name.lower() == FUSION else [get_variant(name)]
        out.extend(v for v in chosen if v not in out)
    return out


def resolve_files(names: list[str] | tuple[str, ...] | None) -> list[RemoteFile]:
    """Turn names into files to fetch: registry names, variant or file names, `fusion`.

    No names means every file the registry knows.
    """
    if not names:
        return list(FILES.values())
    out: list[RemoteFile] = []
    for name in names:
        matches = [
            f for key, f in FILES.items() if name.lower() in (key.lower(), f.filename.lower())
        ]
        chosen = matches or [v.file for v in resolve_variants([name])]
        out.extend(f for f in chosen if f not in out)
    return out

import pytest

from fsanet.assets.zoo import (
    FILES,
    FSANET_COMMIT,
    VARIANTS,
    get_variant,
    resolve_files,
    resolve_variants,
)
from fsanet.core.errors import FsanetError


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_variant_is_found_by_every_name(variant):
    assert get_variant(variant.name) is variant
    assert get_variant(variant.file.filename) is variant
    assert get_variant(variant.file.filename.removesuffix(".pb")) is variant
    assert get_variant(variant.name.upper()) is variant


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_variant_pins_its_source(variant):
    assert FSANET_COMMIT in variant.file.url
    assert variant.file.url.endswith(variant.file.filename)
    assert len(variant.file.sha256) == 64
    assert variant.paper.mae == pytest.approx(
        (variant.paper.yaw + variant.paper.pitch + variant.paper.roll) / 3, abs=0.01
    )


def test_fusion_means_all_three_once():
    assert [v.name for v in resolve_variants(["fusion"])] == ["capsule", "var", "noS"]
    assert [v.name for v in resolve_variants(["var", "fusion"])] == ["var", "capsule", "noS"]
    assert resolve_variants(None) == list(VARIANTS.values())


def test_unknown_model_names_the_choices():
    with pytest.raises(FsanetError, match=r"unknown model 'resnet'.*capsule, var, noS, fusion"):
        get_variant("resnet")


def test_files_resolve_by_name():
    assert resolve_files(None) == list(FILES.values())
    assert [f.name for f in resolve_files(["aflw2000-3d"])] == ["aflw2000-3d"]
    assert len(resolve_files(["fusion"])) == 3
    assert resolve_files(["face_detection_yunet_2026may.onnx"]) == [FILES["yunet"]]

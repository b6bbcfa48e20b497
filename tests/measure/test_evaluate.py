import numpy as np
import pytest

from fsanet.api import evaluate_aflw2000
from fsanet.assets.zoo import FUSION_PAPER, VARIANTS
from fsanet.measure.evaluate import AxisErrors


def test_axis_errors_by_hand():
    labels = np.array([[10.0, 0.0, -5.0], [0.0, 20.0, 5.0]])
    predictions = np.array([[12.0, 1.0, -5.0], [-2.0, 17.0, 6.0]])
    errors = AxisErrors.between(predictions, labels)
    assert (errors.yaw, errors.pitch, errors.roll) == (2.0, 2.0, 0.5)
    assert errors.mae == pytest.approx(1.5)


@pytest.fixture(scope="module")
def report(fusion_engine, shared):
    return evaluate_aflw2000(fusion_engine, batch=64)


def test_fusion_reproduces_the_paper(report):
    assert report.num_images == 1969
    fusion = report.results["fusion"]
    assert fusion.mae == pytest.approx(FUSION_PAPER.mae, abs=0.01)
    for axis in ("yaw", "pitch", "roll"):
        assert getattr(fusion, axis) == pytest.approx(getattr(FUSION_PAPER, axis), abs=0.02)


@pytest.mark.parametrize("name", ["capsule", "var", "noS"])
def test_variants_reproduce_the_paper(report, name):
    assert report.results[name].mae == pytest.approx(VARIANTS[name].paper.mae, abs=0.02)


def test_report_json_and_text(report):
    data = report.to_dict()
    assert data["num_images"] == 1969
    assert data["mae"] == report.results["fusion"].mae
    assert set(data["variants"]) == {"capsule", "var", "noS"}
    assert set(data["variants"]["var"]) == {"yaw", "pitch", "roll", "mae"}
    lines = str(report).splitlines()
    assert lines[-3] == lines[-1] == "-" * 80
    fusion = report.results["fusion"]
    assert lines[-2] == (
        f" MAE = {fusion.mae:.2f}, [yaw,pitch,roll] = "
        f"[{fusion.yaw:.2f}, {fusion.pitch:.2f}, {fusion.roll:.2f}]"
    )


def test_num_and_batch_do_not_change_results(fusion_engine, report):
    small = evaluate_aflw2000(fusion_engine, num=50, batch=7)
    assert small.num_images == 50
    again = evaluate_aflw2000(fusion_engine, num=50, batch=50)
    assert small.results["fusion"].mae == pytest.approx(again.results["fusion"].mae, abs=1e-5)


def test_results_come_in_the_papers_order(report):
    assert list(report.results) == ["capsule", "var", "noS", "fusion"]

import pytest
from pydantic import ValidationError

from rtvp_edge.config import CameraConfig, SimConfig
from rtvp_edge.sources import build_sim_rig


def _cams():
    return [CameraConfig(id=f"C{v}", source="sim", view=v) for v in range(6)]


def test_sim_section_reaches_the_rig():
    rig = build_sim_rig(SimConfig(seed=4, defect_free_share=0.1, defect_size_scale=2.0), _cams())
    assert rig.config.seed == 4
    assert rig.config.defect_free_share == pytest.approx(0.1)
    assert rig.config.defect_size_scale == pytest.approx(2.0)
    default = build_sim_rig(SimConfig(), _cams())
    assert default.config.defect_size_scale == pytest.approx(1.0)


def test_sim_defect_size_scale_must_be_positive():
    with pytest.raises(ValidationError, match="defect_size_scale"):
        SimConfig(defect_size_scale=0)

"""predict.py's report (fibml.report.prediction_report): its measures are fibml.metrics' on the
saved segmentation, read back from the file, not a copy of the numbers the caller holds."""

import numpy as np
import pytest

from fibml.io import write_stack
from fibml.metrics.anisotropy import anisotropy_report
from fibml.report import prediction_report
from fibml.synth.microstructure import leveled_wave


def test_report_measures_the_solid_of_the_central_crop(tmp_path):
    # a leveled wave stretched 2x along z: clearly anisotropic, and its pore (label 0) scores
    # other errors than its solid (label 1), so the phase measured shows in the numbers
    solid = leveled_wave((24, 40, 44), wavelength_nm=20.0, solid_fraction=0.3, voxel_size_nm=2.5, seed=5)
    segmentation = np.repeat(solid, 2, axis=0).astype(np.uint8)  # (48, 40, 44)
    path = tmp_path / "segmentation.tif"
    write_stack(path, segmentation, 2.5)
    info = {"class_fractions": [float((segmentation == c).mean()) for c in (0, 1)], "shape": list(segmentation.shape),
            "voltages_kV": [2.0], "slices_per_second": 10.0, "chunks": 1, "chunks_computed": 1}
    fields = prediction_report(tmp_path, path, segmentation.astype(np.float32), (2.5, 2.5, 2.5), info, crop=32)

    crop = segmentation[8:40, 4:36, 6:38]  # the central 32^3: starts (n - 32) // 2
    expected = anisotropy_report(crop, (2.5, 2.5, 2.5), phase=1)
    pore = anisotropy_report(crop, (2.5, 2.5, 2.5), phase=0)
    assert fields["anisotropy_crop"] == [32, 32, 32]
    for key, column in {"e_tpcf": "e_TPCF", "e_lpf": "e_LPF", "e_d": "e_D"}.items():
        assert fields["anisotropy"][column] == pytest.approx(expected[key], rel=1e-9), column
    assert abs(expected["e_tpcf"] - pore["e_tpcf"]) > 0.05  # the solid's error, not the pore's
    assert expected["e_tpcf"] > 0.1  # stretched: anisotropic
    report = (tmp_path / "report.md").read_text()
    assert f"e_TPCF {expected['e_tpcf']:.4f}, e_LPF {expected['e_lpf']:.4f}, e_D {expected['e_d']:.4f}" in report
    assert "central crop 32 x 32 x 32" in report and "| fraction of class 1 (solid) | " in report
    assert (tmp_path / "sections.png").stat().st_size > 10_000

"""python -m fibml.ingest: vendor slice series -> dataset folders; the slice thickness from the
structure when the files lack it (fibml.metrics.spacing)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fibml.io import read_dataset, read_stack
from fibml.metrics.spacing import estimate_slice_spacing
from fibml.pipelines.ingest import SPACING_FIGURE, ingest
from fibml.synth.microstructure import leveled_wave
from fibml.synth.vendor_files import write_fei_tiff, write_zeiss_tiff
from tests.conftest import compose_config


def _config(tmp_path, *overrides):
    return compose_config("ingest", list(overrides), tmp_path)


def _series(folder, structure: np.ndarray, writer=write_fei_tiff, seed=0, **kwargs):
    """A vendor series of a binary structure imaged as grey values with noise (solid bright)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for z, plane in enumerate(structure):
        image = np.where(plane, 170, 70) + rng.normal(0, 12, plane.shape)
        writer(folder / f"slice_{z + 1:04d}.tif", np.clip(image, 0, 255).astype(np.uint8), **kwargs)
    return folder


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.6])
def test_slice_spacing_of_a_leveled_wave_is_recovered(factor):
    # a stack whose true slice spacing is factor x the pixel; the estimate ignores what the file
    # says and measures where the structure is most isotropic
    pixel = 5.0
    true = factor * pixel
    labels = leveled_wave((64, 128, 128), 60.0, 0.35, voxel_size_nm=(true, pixel, pixel), seed=2).astype(np.uint8)
    estimate = estimate_slice_spacing(labels, pixel)
    assert estimate.spacing_nm == pytest.approx(true, rel=0.05)
    assert 0 < estimate.uncertainty_nm < 0.1 * true
    assert estimate.candidates_nm[0] == pytest.approx(0.25 * pixel) and len(estimate.errors) == 57
    # the scan's minimum is where the refined estimate is
    best = estimate.candidates_nm[np.argmin(estimate.errors)]
    assert best == pytest.approx(estimate.spacing_nm, rel=0.1)


def test_ingest_writes_a_dataset_folder_with_the_metadata(tmp_path, capsys):
    structure = leveled_wave((12, 40, 48), 40.0, 0.35, voxel_size_nm=5.0, seed=1)
    _series(tmp_path / "asv", structure, databar_rows=10, pixel_nm=5.0, hv_kv=2.0, detector="CBS", mode="BSE")
    out = ingest(_config(tmp_path, f"input={tmp_path / 'asv'}", f"out={tmp_path / 'ds'}", "slice_thickness_nm=7.5"))
    dataset = read_dataset(out)
    assert dataset.voltages == [2.0] and dataset.voxel_size_nm == (7.5, 5.0, 5.0)
    stack = dataset.images[2.0]
    assert stack.shape == (12, 40, 48) and stack.dtype == np.uint8  # 10 rows of data bar cut off, grey kept
    assert stack[structure].mean() > 150 > 90 > stack[~structure].mean()
    manifest = json.loads((out / "manifest.json").read_text())
    acquisition = manifest["acquisition"]
    assert acquisition["channels"]["2kV"]["metadata"]["detector"] == "CBS"
    assert acquisition["channels"]["2kV"]["files"][0].endswith("slice_0001.tif")
    assert acquisition["provenance"]["slice_thickness"] == "slice_thickness_nm from the config"
    printed = capsys.readouterr().out
    assert "| 2kV | bse_2kV.tif | 12 | 40 x 48 |" in printed and "10 bottom rows cut" in printed


def test_ingest_estimates_the_slice_thickness(tmp_path):
    # Zeiss slices of a structure whose slices are 1.4 x the pixel apart, tilt-corrected by the microscope
    pixel, true = 5.0, 7.0
    structure = leveled_wave((64, 128, 128), 60.0, 0.35, voxel_size_nm=(true, pixel, pixel), seed=3)
    _series(tmp_path / "atlas", structure, writer=write_zeiss_tiff, databar_rows=16, pixel_nm=pixel, eht_kv=2.0,
            detector="ESB", tilt_correction=True)
    out = ingest(_config(tmp_path, f"input={tmp_path / 'atlas'}", f"out={tmp_path / 'ds'}", "slice_thickness_nm=auto"))
    dataset = read_dataset(out)
    assert dataset.voxel_size_nm[0] == pytest.approx(true, rel=0.05)
    assert dataset.voxel_size_nm[1:] == (pixel, pixel)
    estimate = json.loads((out / "manifest.json").read_text())["acquisition"]["slice_thickness_estimate"]
    assert estimate["spacing_nm"] == pytest.approx(dataset.voxel_size_nm[0])
    assert (out / SPACING_FIGURE).stat().st_size > 10_000


def test_bad_input_writes_nothing(tmp_path):
    structure = leveled_wave((12, 40, 48), 40.0, 0.35, voxel_size_nm=5.0, seed=1)[:4]
    folder = _series(tmp_path / "asv", structure, databar_rows=10, pixel_nm=5.0)
    with pytest.raises(ValueError, match="slice thickness is in none of the files: set slice_thickness_nm="):
        ingest(_config(tmp_path, f"input={folder}", f"out={tmp_path / 'ds'}"))
    (folder / "slice_0003.tif").write_bytes((folder / "slice_0003.tif").read_bytes()[:500])
    with pytest.raises(ValueError, match="slice_0003.tif"):
        ingest(_config(tmp_path, f"input={folder}", f"out={tmp_path / 'ds'}", "slice_thickness_nm=5"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asv"]  # no dataset, no temporary folder


def test_the_command_line(tmp_path):
    structure = leveled_wave((12, 40, 48), 40.0, 0.35, voxel_size_nm=5.0, seed=1)[:3]
    folder = _series(tmp_path / "asv", structure, databar_rows=10, pixel_nm=5.0, hv_kv=1.0, detector="CBS", mode="BSE")
    result = subprocess.run([sys.executable, "-m", "fibml.ingest", f"input={folder}", f"out={tmp_path / 'ds'}",
                             "slice_thickness_nm=5"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "ingest ds: 3/3 slices" in result.stdout  # plain progress lines: no terminal
    stack, voxel = read_stack(tmp_path / "ds" / "bse_1kV.tif")
    assert stack.shape == (3, 40, 48) and voxel == (5.0, 5.0, 5.0)


def test_ingest_measures_each_slice_from_ruler_marks(tmp_path):
    """Slices of varying thickness with ruler marks milled above the sample (the band on top of
    every image): thickness.csv per slice from the marks, the band cut off the stacks."""
    from fibml.io import read_thickness_csv
    from fibml.reconstruct.ruler import add_ruler

    rng = np.random.default_rng(0)
    thicknesses = rng.gamma(16.0, 10.0 / 16.0, size=12)  # mean 10 nm, varying
    z_nm = np.concatenate([[0.0], np.cumsum(thicknesses)[:-1]])
    sample = rng.normal(0.5, 0.1, size=(12, 24, 400)).astype(np.float32)  # 1 um wide: room for the marks
    images, band = add_ruler(sample, z_nm, pixel_nm=2.5, band_rows=16, noise_sigma=0.0)
    grey = np.round(np.clip(images, 0, 1) * 60000).astype(np.uint16)
    folder = tmp_path / "asv"
    folder.mkdir()
    for z, image in enumerate(grey):
        write_fei_tiff(folder / f"slice {z + 1}.tif", image, databar_rows=10, pixel_nm=2.5, detector="CBS", mode="BSE")
    out = ingest(_config(tmp_path, f"input={folder}", f"out={tmp_path / 'ds'}", "slice_thickness_nm=ruler",
                         "ruler.band_rows=16", "ruler.outlier_z=null"))
    measured = read_thickness_csv(out / "thickness.csv", 12)
    assert np.abs(measured[:-1] - thicknesses[:-1]).max() < 2.5  # the last slice has no next mark
    dataset = read_dataset(out)
    assert dataset.images[2.0].shape == (12, 24, 400)  # ruler band (16 rows) and data bar (10 rows) cut off
    assert dataset.voxel_size_nm[0] == pytest.approx(measured.mean())
    np.testing.assert_array_equal(dataset.images[2.0], grey[:, 16:])

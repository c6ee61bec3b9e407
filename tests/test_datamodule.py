"""FIBSEMDataModule: splits, patch layout per dims, per-device batch, the embedded default."""

from types import SimpleNamespace

import numpy as np
import pytest

from fibml.data.datamodules import FIBSEMDataModule
from tests.conftest import TINY_STRUCTURE


def _module(data_dir, **kwargs):
    settings = dict(voltages=[1, 4], dims="2d", patch_size=32, stride=16, batch_size=8, split={"gap": 4})
    settings.update(kwargs)
    return FIBSEMDataModule(data_dir, **settings)


def test_setup_splits_and_normalises(tiny_dataset):
    dm = _module(tiny_dataset)
    dm.setup("fit")
    assert dm.images.shape == (2, 40, 48, 48)
    assert dm.images.min() >= 0 and dm.images.max() <= 1
    train, val, test = dm.blocks["train"], dm.blocks["val"], dm.blocks["test"]
    # the tiny dataset is periodic: gaps between blocks and after the last one
    assert val.start - train.stop == 4 and test.start - val.stop == 4 and 40 - test.stop == 4
    z_of_train_patches = set(dm.datasets["train"].index[:, 0])
    assert z_of_train_patches == set(train)
    assert len(dm.datasets["val"]) == len(val) * 2 * 2  # 48 px, patch 32, stride 16: starts 0, 16
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 2, 32, 32) and y.shape == (8, 32, 32)
    assert set(np.unique(y.numpy())) <= {0, 1}


@pytest.mark.parametrize(
    "dims, n_adjacent, patch, expected",
    [("2.5d", 5, 32, (4, 10, 32, 32)), ("3d", 7, [4, 32, 32], (4, 2, 4, 32, 32))],
)
def test_batch_layout_per_dims(tiny_dataset, dims, n_adjacent, patch, expected):
    dm = _module(tiny_dataset, dims=dims, n_adjacent=n_adjacent, patch_size=patch, stride=patch, batch_size=4)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert tuple(x.shape) == expected
    assert tuple(y.shape) == (expected[0], *expected[-len(dm.datasets["val"].patch):])


def test_global_batch_is_divided_over_devices(tiny_dataset):
    dm = _module(tiny_dataset, batch_size=8)
    dm.trainer = SimpleNamespace(world_size=2)
    dm.setup("fit")
    assert dm.batch_size_per_device == 4
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 4
    odd = _module(tiny_dataset, batch_size=7)
    odd.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match="not divisible by the 2 devices"):
        odd.setup("fit")


def test_embedded_default_is_generated_once_and_reused(tmp_path):
    generator = dict(shape=[40, 48, 48], voxel_size_nm=2.5, voltages=[2], structure=TINY_STRUCTURE, imaging={}, seed=0)
    dm = FIBSEMDataModule(None, voltages=[2], patch_size=32, split={"gap": 4}, cache_dir=tmp_path, generator=generator)
    dm.prepare_data()
    folder = dm.dataset_path
    assert folder.parent == tmp_path and (folder / "labels.tif").is_file()
    stamp = (folder / "labels.tif").stat().st_mtime_ns
    again = FIBSEMDataModule(None, voltages=[2], patch_size=32, split={"gap": 4}, cache_dir=tmp_path, generator=generator)
    again.prepare_data()
    again.setup("fit")
    assert again.dataset_path == folder and (folder / "labels.tif").stat().st_mtime_ns == stamp
    assert len(list(tmp_path.iterdir())) == 1


def test_missing_voltage_and_missing_labels_are_named(tiny_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="bse_3kV.tif"):
        _module(tiny_dataset, voltages=[3]).setup("fit")
    unlabelled = tmp_path / "real"
    unlabelled.mkdir()
    (unlabelled / "bse_1kV.tif").write_bytes((tiny_dataset / "bse_1kV.tif").read_bytes())
    (unlabelled / "bse_4kV.tif").write_bytes((tiny_dataset / "bse_4kV.tif").read_bytes())
    with pytest.raises(FileNotFoundError, match="labels.tif"):
        _module(unlabelled).setup("fit")


def test_bad_dims_rejected(tiny_dataset):
    with pytest.raises(ValueError, match="data.dims"):
        _module(tiny_dataset, dims="4d")


def test_evaluation_volume_of_a_datamodule_and_of_an_unlabelled_folder(tiny_dataset, tmp_path):
    import shutil

    from fibml.data.volume import unlabelled_volume

    dm = _module(tiny_dataset)
    with pytest.raises(RuntimeError, match="call setup"):
        dm.evaluation_volume("test")
    dm.setup("test")
    volume = dm.evaluation_volume("test")
    assert volume.z == dm.blocks["test"] and volume.train_z == dm.blocks["train"] and volume.voltages == [1.0, 4.0]
    np.testing.assert_array_equal(volume.truth, dm.labels[volume.z.start : volume.z.stop])
    assert volume.phase_names(3) == ["pore", "solid", "phase 2"] and volume.n_phases == 2
    assert volume.title() == f"{tiny_dataset.name}, test slices"

    # the same folder without labels.tif: every slice, normalised as the datamodule does, no truth
    folder = tmp_path / "real"
    shutil.copytree(tiny_dataset, folder)
    (folder / "labels.tif").unlink()
    real = unlabelled_volume(folder, [1, 4], None, "all")
    np.testing.assert_array_equal(real.images, dm.images)
    assert real.z == range(40) and real.truth is None and real.train_z is None and real.n_phases == 2
    with pytest.raises(ValueError, match="has no labels.tif, so it has no held-out 'test' block"):
        unlabelled_volume(folder, [1, 4], None, "test")

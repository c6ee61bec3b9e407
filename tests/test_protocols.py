"""The declared interfaces: every task says what it is for, crops are read where a source can."""

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from fibml.baselines import KMeansSegmenter, MultiThreshold, OtsuThreshold, RandomForestSegmenter
from fibml.inference import NormalizedStack
from fibml.io import open_stack, write_stack
from fibml.nets.fusion import LateFusion
from fibml.nets.unet import ResidualUNet
from fibml.protocols import (
    BACKSCATTER,
    INPAINTING,
    SEGMENTATION,
    TRANSLATION,
    RanksFeatures,
    RegionSource,
    SliceSource,
    StatesRule,
    WeighsVoltages,
    read_region,
    task_of,
)
from fibml.tasks.backscatter import BackscatterTask
from fibml.tasks.cyclegan import CycleGANTask
from fibml.tasks.fusion import LateFusionTask
from fibml.tasks.inpainting import InpaintingTask
from fibml.tasks.segmentation import SegmentationTask


@pytest.mark.parametrize("cls, task", [(SegmentationTask, SEGMENTATION), (LateFusionTask, SEGMENTATION),
                                       (InpaintingTask, INPAINTING), (CycleGANTask, TRANSLATION),
                                       (BackscatterTask, BACKSCATTER)])
def test_every_task_declares_what_it_is_for(cls, task):
    assert cls.task == task
    assert task_of(object.__new__(cls)) == task  # read from the class: no instance needed


def test_a_model_of_another_kind_has_no_task():
    assert task_of(nn.Linear(2, 2)) is None
    assert task_of(type("Odd", (), {"task": "cooking"})()) is None  # only fibml's tasks count


class _Counting:
    """A slice source without crops: counts whole slices read."""

    def __init__(self, array):
        self.array, self.shape, self.reads = array, array.shape, 0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, z):
        self.reads += 1
        return self.array[z]


def test_read_region_reads_a_crop_where_the_source_can(tmp_path):
    stack = np.arange(3 * 40 * 30, dtype=np.float32).reshape(3, 40, 30)
    lazy = open_stack(write_stack(tmp_path / "s.tif", stack))
    assert isinstance(lazy, RegionSource) and isinstance(NormalizedStack(lazy, 0.0, 1.0), RegionSource)
    np.testing.assert_array_equal(read_region(lazy, 2, slice(5, 9), slice(10, 12)), stack[2, 5:9, 10:12])
    counting = _Counting(stack)
    assert isinstance(counting, SliceSource) and not isinstance(counting, RegionSource)
    np.testing.assert_array_equal(read_region(counting, 1, slice(0, 2), slice(3, 4)), stack[1, 0:2, 3:4])
    assert counting.reads == 1
    assert not isinstance(torch.zeros(3), RegionSource)
    np.testing.assert_array_equal(read_region(stack, 0, slice(1, 2), slice(None)), stack[0, 1:2])


def test_optional_reports_are_declared():
    # a late-fusion net reports its voltage weights, a U-Net has none
    late = LateFusion(partial(ResidualUNet, in_channels=1, spatial_dims=2, features=[4, 8], out_channels=2), 3, 2)
    assert isinstance(late, WeighsVoltages) and len(late.voltage_weights()) == 3
    assert not isinstance(ResidualUNet(in_channels=3, out_channels=2, spatial_dims=2, features=[4, 8]), WeighsVoltages)
    # thresholds state their rule, the random forest ranks its features, k-means does neither
    assert isinstance(MultiThreshold(), StatesRule) and not isinstance(MultiThreshold(), RanksFeatures)
    assert isinstance(RandomForestSegmenter(), RanksFeatures)
    for plain in (KMeansSegmenter(), OtsuThreshold()):
        assert not isinstance(plain, StatesRule) and not isinstance(plain, RanksFeatures)

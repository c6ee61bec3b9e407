"""Sliding-window prediction: no seams, the right slices and channels for 2D, 2.5D and 3D."""

import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from fibml.inference import predict_volume


class Pointwise(torch.nn.Module):
    """Per-pixel two-class 'net': p(solid) = sigmoid(4 * (mean over channels - 0.5))."""

    def forward(self, x):
        logit = 4.0 * (x.mean(1, keepdim=True) - 0.5)
        return torch.cat([-logit, logit], 1).softmax(1)


def _images(shape=(2, 10, 45, 53), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_stitching_reproduces_a_pointwise_net_exactly(dims):
    # Gaussian-weighted overlaps of a pointwise net must give back the net applied to the whole
    # volume: any seam, shift or wrong normalisation at patch borders shows up here.
    images = _images()
    patch = 16 if dims == "2d" else [6, 16, 16]
    probs = predict_volume(Pointwise(), images, dims, patch, overlap=0.5, progress=False)
    direct = Pointwise()(torch.from_numpy(images)[None])[0].numpy() if dims == "3d" else (
        Pointwise()(torch.from_numpy(images).transpose(0, 1)).transpose(0, 1).numpy()
    )
    assert probs.shape == (2, *images.shape[1:])
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_z_range_selects_slices():
    images = _images()
    probs = predict_volume(Pointwise(), images, "2d", 16, z_range=range(3, 7), progress=False)
    full = predict_volume(Pointwise(), images, "2d", 16, progress=False)
    np.testing.assert_allclose(probs, full[:, 3:7], atol=1e-6)


def test_25d_feeds_adjacent_slices_voltage_major():
    # a net that returns channel j as the solid probability shows which slice sits in channel j
    images = np.zeros((2, 9, 20, 20), dtype=np.float32)
    for v in range(2):
        for z in range(9):
            images[v, z] = 0.01 * (10 * v + z)

    class Pick(torch.nn.Module):
        def __init__(self, channel):
            super().__init__()
            self.channel = channel

        def forward(self, x):
            p = x[:, self.channel : self.channel + 1]
            return torch.cat([1 - p, p], 1)

    k = 3
    for channel, (v, dz) in {0: (0, -1), 2: (0, 1), 4: (1, 0)}.items():
        probs = predict_volume(Pick(channel), images, "2.5d", 16, n_adjacent=k, progress=False)
        for z in range(9):
            source = abs(z + dz) if z + dz >= 0 else -(z + dz)
            source = 2 * 8 - source if source > 8 else source  # mirrored at the stack ends
            np.testing.assert_allclose(probs[1, z], images[v, source], atol=1e-6)


_FAULTS = """
import resource, sys, torch
from fibml.inference import reuse_host_memory
if sys.argv[1] == "reuse":
    assert reuse_host_memory()
block = 64 * 2**20 // 4  # 64 MB of float32: above glibc's largest mmap threshold (32 MB)
for _ in range(4):
    torch.ones(block)  # first uses: new pages either way, until the heap has a hole that fits
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(block)  # allocated, written, freed, like a batch's tensors
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="reuse_host_memory tunes glibc's malloc")
def test_reuse_host_memory_reuses_freed_blocks_without_page_faults():
    # in fresh interpreters: the setting is process-wide and permanent
    def faults(mode):
        done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])

    pages = 5 * 64 * 2**20 // 4096
    assert faults("reuse") < 0.45 * pages  # the freed block is taken again, its pages already mapped
    assert faults("default") > 0.8 * pages  # glibc maps and unmaps it each time

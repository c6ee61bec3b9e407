"""Sliding-window prediction over whole slices and volumes, with Gaussian blending: in memory
(predict_volume) or chunk by chunk straight to disk (predict_to_disk).

Overlapping patches are stitched with Gaussian weights, so there are no seams at patch borders:
2D and 2.5D slices by fibml.sliding_window (MONAI's windows and weights, vectorised over the
windows), 3D blocks by MONAI's sliding_window_inference itself. fibml only arranges the
(channel, z, y, x) stack into the inputs each kind of net expects (2D slices, 2.5D slices with
k neighbours, 3D blocks). The argmax and the class counts are computed on the net's device, so
only the uint8 labels (and the probabilities, when asked for) come back to the CPU.

Chunked prediction to disk (predict_to_disk)
--------------------------------------------
A real acquisition (3 voltages x 316 slices x 3072 x 2048 pixels) is 6-12 GB as stored, four
times that as normalised float32, and its class probabilities as much again. predict_to_disk
holds one chunk at a time and resumes after a crash or a kill:

Input. `channels`: one slice source per channel, anything with `.shape` (z, y, x) whose `[z]`
is a normalised float32 (y, x) slice: a NormalizedStack over a fibml.io.LazyStack, a
registration wrapper, an in-memory array. A chunk reads only the slices it needs.

2D / 2.5D. Slices go in chunks of `chunk_slices`; each slice is predicted over its whole
(y, x) extent exactly as predict_volume does, and a 2.5D input takes its k neighbours from the
whole stack (mirrored at its ends), so chunk borders change nothing. Within a chunk,
`slices_per_batch` slices go through the net together.

3D, blocks with a halo. MONAI places windows along each axis at multiples of the stride
s = int(p * (1 - overlap)) (p the patch size), the last one moved back flush with the end
(start N - p). The volume is cut into blocks whose cores [a, b) start and end on that grid
(core sizes are multiples of s). In the whole-volume run a core voxel x is covered by the grid
windows starting in (x - p, x], and by the end window N - p when N - p <= x. The block around
a core is read from A = a - s * floor((p - 1) / s), the first grid point whose window reaches
the core (or the last grid point <= N - p if that is smaller, so the block holds a patch), to
B = b - s + p, the end of the last grid window starting in the core (or to N when b + p > N,
where the volume's end window may reach the core). Run on [A, B) alone, MONAI starts windows
at the grid points from A (A is one) and moves its last one back to B - p, which is itself a
grid window (b - s) or the volume's end window N - p: over the core it places exactly the
whole-volume run's windows, with the same Gaussian weights, summed in the same order, so the
chunked probabilities equal the whole-volume ones (only the net's own batch-size dependent
rounding differs). axis_blocks checks this for every block of every run against MONAI's own
window placement (monai.data.utils.dense_patch_slices), and the tests compare the results.
The halos are shorter than a patch: p - s after the core, s * floor((p - 1) / s) before it
(a little more before a last core that is shorter than a patch).

Output, all in out_dir. segmentation.tif (uint8 argmax) and, with save_probabilities,
probability_class<c>.tif (float32): ImageJ TIFFs with the voxel size, like fibml.io.write_stack
writes them. They are created at the start, pixels zero and contiguous, in the work folder
out_dir/.partial/ (fibml.io.create_stack_file); each chunk writes its slices (or its block's
core) into them with positioned writes (fibml.io.StackFile: os.pwrite, no memory map, so
the files' pages never count in the process's resident memory) and flushes them (fsync)
before it is recorded; only when every chunk is done are they renamed into out_dir
(segmentation.tif last), so out_dir never holds a half-written segmentation.tif. The inputs
are read the same way (fibml.io.LazyStack: positioned reads of the rows a chunk needs), so
the process's peak memory is one chunk's worth, not the size of the files.

Ledger and resume. .partial/ledger.json holds the fingerprint: the caller's dict (checkpoint,
input files with size and mtime, inference settings) with the output layout (shape, classes,
patch, overlap, chunking, voxel size). Each process records the chunks it has finished and
flushed, with their class counts, in its own .partial/done-<run>-<rank>.json, rewritten
atomically after every chunk. A rerun with the same fingerprint skips every recorded chunk; a
work folder with another fingerprint is refused unless overwrite=True, which discards it.
Once finished, out_dir/prediction_fingerprint.json keeps the fingerprint and the summary
(class fractions of the whole stack included): a rerun with the same fingerprint returns it at
once, another fingerprint is refused unless overwrite=True (which removes the old results
first). overwrite never discards finished work of the same fingerprint: the same inputs,
checkpoint and settings give the same files.

Several devices. One spawned worker process per device takes every n-th remaining chunk,
builds its own predictor from a PredictorFactory, writes its chunks into the shared
output files (chunks never overlap, nor do the bytes their writes touch) and its own done
file; the parent follows the done files (progress bar, on_chunk) and finalises.

The package: `windows` (prediction in memory, the net inputs), `chunks` (the chunk plan),
`ledger` (the work folder, and ResumeLedger: open / resume / commit / finalise), `disk`
(predict_to_disk: plan_prediction's checked DiskPlan, the ledger, the workers), `settings`
(InferenceSettings, the inference keys of a config parsed once). Their public names are importable from fibml.inference itself.
"""

from fibml.inference.chunks import axis_blocks, plan_chunks
from fibml.inference.disk import DiskPlan, plan_prediction, predict_to_disk
from fibml.inference.ledger import (
    FINGERPRINT,
    SEGMENTATION,
    WORK_DIR,
    DoneFile,
    ResumeLedger,
    finished_chunks,
    probability_name,
)
from fibml.inference.settings import InferenceSettings
from fibml.inference.windows import (
    NormalizedStack,
    PredictorFactory,
    ResampledStack,
    first_argmax,
    predict_volume,
    resolve_device,
    reuse_host_memory,
)

__all__ = [
    "FINGERPRINT",
    "SEGMENTATION",
    "WORK_DIR",
    "DiskPlan",
    "DoneFile",
    "InferenceSettings",
    "NormalizedStack",
    "PredictorFactory",
    "ResampledStack",
    "ResumeLedger",
    "axis_blocks",
    "finished_chunks",
    "first_argmax",
    "plan_chunks",
    "plan_prediction",
    "predict_to_disk",
    "predict_volume",
    "probability_name",
    "resolve_device",
    "reuse_host_memory",
]

"""TIFF stacks and dataset folders on disk.

A dataset is a folder with `manifest.json` (voxel size in nm, voltages, materials, generator
parameters, fibml version) and (z, y, x) TIFF stacks, one per image channel, and `labels.tif`
(uint8 ground truth, 0 = pore, 1 = solid, more classes allowed). Real data has the same layout
without labels.

Channels. A BSE stack at V kV is `bse_<V>kV.tif` and its channel key is the voltage, a float
(2 -> bse_2kV.tif). Other detectors (the in-lens and chamber SE2 detectors of
random-forest-multi-detector.txt) are `<detector>_<V>kV.tif` and their key is that name, a
string ("se2_1kV" -> se2_1kV.tif). Wherever fibml asks for `voltages` (data.voltages, the
dataset reader), either kind of key may be given: `[1, 2, 4]` or `[se2_1kV, inlens_1kV]`. Every writer is atomic: a temporary file (or folder) is
renamed into place, so an interrupted run leaves nothing half-written.

Lazy stacks. A real acquisition (3 voltages x 316 slices x 3072 x 2048) does not fit in memory
as float32; `open_stack` opens a TIFF without reading its pixels and checks that it is complete
(a truncated copy is refused before hours of prediction), `LazyStack` reads slices on demand,
`open_dataset_stacks` opens a dataset folder that way (fibml.data.transforms.stack_percentiles
computes the normalisation range of such a stack from a bounded sub-sample). Results too large for memory are written piece
by piece: `create_stack_file` creates an ImageJ TIFF of zeros (laid out like write_stack's) and
returns a `StackFile` that writes slices or 3D blocks into it. Neither reads nor writes go
through memory maps (whose pages count in the process's resident memory, up to the size of
the files): both use positioned reads and writes (os.preadv / os.pwrite) of just the bytes
needed.

Acquisitions. What a microscope writes (a folder of one TIFF per slice, per detector or
voltage; a multi-page stack; one image) is opened with `open_acquisition`: files in slice
order, grouped into channels, the vendor's data bar cut off, the pixel size, voltage, detector,
tilt and date read from the FEI / Thermo Fisher, Zeiss, OME or ImageJ metadata; every series is
a `SliceSeries`, a slice source read one slice at a time.

The package by job: `tiff` (whole stacks and their voxel size), `lazy` (slice-by-slice reads
and positioned writes), `integrity` (truncated TIFFs), `dataset` (dataset folders, manifests,
thickness.csv), `files` (JSON, CSV values, atomic writes), `vendor` (the metadata of vendor
TIFFs), `databar` (the information bar under SEM images), `acquisition` (slice series as
microscopes write them), `omezarr` (segmentations as OME-Zarr, for napari and volume-EM tools). Their public names are importable from fibml.io itself.
"""

from fibml.channels import channel_key, channel_label
from fibml.io.acquisition import (
    Acquisition,
    SliceSeries,
    acquisition_channel,
    is_acquisition_folder,
    natural_key,
    open_acquisition,
    slice_number,
)
from fibml.io.databar import databar_rows, detect_databar
from fibml.io.dataset import (
    LABELS,
    MANIFEST,
    THICKNESS,
    Dataset,
    available_channels,
    dataset_manifest,
    open_dataset_stacks,
    read_dataset,
    read_manifest,
    read_thickness_csv,
    stack_name,
    write_dataset,
    write_thickness_csv,
)
from fibml.io.files import atomic_folder, atomic_path, json_default, shape_mismatch, write_json
from fibml.io.lazy import LazyStack, StackFile, create_stack_file, open_stack, open_stack_file
from fibml.io.omezarr import read_ome_zarr, write_ome_zarr
from fibml.io.tiff import read_stack, write_stack
from fibml.io.vendor import SliceMetadata, read_slice_metadata

__all__ = [
    "LABELS",
    "MANIFEST",
    "THICKNESS",
    "Acquisition",
    "Dataset",
    "LazyStack",
    "SliceMetadata",
    "SliceSeries",
    "StackFile",
    "acquisition_channel",
    "atomic_folder",
    "atomic_path",
    "available_channels",
    "channel_key",
    "channel_label",
    "create_stack_file",
    "databar_rows",
    "dataset_manifest",
    "detect_databar",
    "is_acquisition_folder",
    "json_default",
    "natural_key",
    "open_acquisition",
    "open_dataset_stacks",
    "open_stack",
    "open_stack_file",
    "read_dataset",
    "read_manifest",
    "read_ome_zarr",
    "read_slice_metadata",
    "read_stack",
    "read_thickness_csv",
    "shape_mismatch",
    "slice_number",
    "stack_name",
    "write_dataset",
    "write_json",
    "write_ome_zarr",
    "write_stack",
    "write_thickness_csv",
]

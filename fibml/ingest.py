"""`python -m fibml.ingest input=<folder | file(s)> out=<dataset folder> [slice_thickness_nm=<nm | auto>]`.

An acquisition as the microscope wrote it (a folder of one TIFF per slice, per detector or
voltage; a multi-page stack; one image) becomes a dataset folder: one stack per channel
(bse_<V>kV.tif, <detector>_<V>kV.tif), manifest.json with the voxel size, the metadata read and
the source files. Every key has a default in configs/ingest.yaml; see fibml.pipelines.ingest.
"""

import hydra
from omegaconf import DictConfig

from fibml.config import CONFIG_DIR
from fibml.pipelines.ingest import ingest


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="ingest")
def main(cfg: DictConfig) -> None:
    ingest(cfg)


if __name__ == "__main__":
    main()

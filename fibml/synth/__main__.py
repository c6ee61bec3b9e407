"""`python -m fibml.synth out=<folder> [seed=... shape=[z,y,x] voltages=[1,2,4] generator=...]`.

Writes a dataset folder (manifest.json, bse_<V>kV.tif or <detector>_<V>kV.tif, labels.tif);
every key has a default in configs/synth.yaml and configs/generator/ (generator=electrode: the
three-phase electrode imaged with two detectors; simulator=montecarlo: BSE images from the voxel
Monte Carlo simulator instead of the fast forward model; artefacts=realistic: curtaining, charging,
shading, correlated noise, ... of a real acquisition on top, the target domain for domain adaptation).
"""

import hydra
from omegaconf import DictConfig

from fibml.config import CONFIG_DIR, register_resolvers
from fibml.synth.dataset import generate_dataset

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="synth")
def main(cfg: DictConfig) -> None:
    folder = generate_dataset(
        cfg.out, cfg.shape, cfg.voxel_size_nm, cfg.voltages, cfg.structure, cfg.imaging,
        seed=cfg.seed, overwrite=cfg.overwrite, detectors=cfg.get("detectors"), phases=cfg.get("phases"),
        thickness=cfg.get("thickness"), simulator=cfg.get("simulator"), artefacts=cfg.get("artefacts"),
    )
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()

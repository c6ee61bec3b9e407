"""`python predict.py task=translate`: a dataset translated by a trained CycleGAN into the other
domain, written as a new dataset folder with the same labels."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from fibml.channels import channel_key
from fibml.checkpoints import load_model, resolve_checkpoint
from fibml.data.unpaired import domain_scaling, from_unit, to_unit
from fibml.inference import InferenceSettings, predict_volume, resolve_device
from fibml.io import read_dataset, write_dataset
from fibml.protocols import TRANSLATION, task_of

__all__ = ["translate"]


def translate(cfg: DictConfig) -> Path:
    """python predict.py task=translate ckpt_path=<CycleGAN run> input=<dataset> output=<dataset>:
    the input's channel of the trained source domain (target domain with direction=ba), scaled to
    [-1, 1] by its own percentiles as in training, translated slice by slice (Gaussian-blended
    sliding window), mapped to the grey values of the other domain; written with the same labels
    and voxel size as a new dataset folder, ready for segmentation training. A run folder gives its
    last.ckpt: the validation cycle error that picks best.ckpt does not measure how realistic the
    translation is (it may rise while the generators learn the target's look)."""
    checkpoint = resolve_checkpoint(cfg.ckpt_path, prefer=("last.ckpt", "best.ckpt"))
    model, run_cfg = load_model(checkpoint)
    if task_of(model) != TRANSLATION:
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}: task=translate needs a CycleGAN run "
                         "(experiment=cyclegan_sim or cyclegan_da)")
    direction = cfg.get("direction") or "ab"
    if direction not in ("ab", "ba"):
        raise ValueError(f"direction must be 'ab' (source -> target) or 'ba', got {direction!r}")
    source_domain, target_domain = ("a", "b") if direction == "ab" else ("b", "a")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    scaling = next((v["scaling"] for v in state.values() if isinstance(v, dict) and "scaling" in v), None)
    if not scaling or target_domain not in scaling:
        raise ValueError(f"{checkpoint} keeps no grey-value scaling of the domains (written by an older fibml?)")
    channel = run_cfg.data.source_channel if direction == "ab" else run_cfg.data.target_channel

    source = Path(cfg.input)
    if not source.is_dir():
        raise FileNotFoundError(f"input {source} is not a dataset folder")
    dataset = read_dataset(source, None if channel is None else [channel_key(channel)])
    key = dataset.voltages[0] if channel is None else channel_key(channel)
    if channel is None and len(dataset.voltages) > 1:
        raise ValueError(f"{source} holds channels {dataset.voltages}: the CycleGAN was trained on one; "
                         "set data.source_channel when training")
    stack = dataset.images[key]
    images = to_unit(stack, *domain_scaling(source, [stack], run_cfg.data.percentiles))[None]
    inference = InferenceSettings.from_config(cfg.inference)
    device = resolve_device(inference.device)
    model = model.to(device)
    started = time.perf_counter()
    translated = predict_volume(
        lambda x: model.translate(x, direction), images, dims="2d", patch_size=run_cfg.data.patch_size,
        overlap=inference.overlap, slices_per_batch=inference.slices_per_batch,
        sw_batch_size=inference.sw_batch_size, device=device, reuse_memory=inference.reuse_memory,
    )[0]
    seconds = time.perf_counter() - started
    translated = from_unit(translated, *scaling[target_domain])
    manifest = dict(dataset.manifest) | {
        "translated": {"checkpoint": str(checkpoint), "direction": direction, "from": str(source),
                       "seconds": round(seconds, 3)},
    }
    out = write_dataset(cfg.output, {key: translated}, dataset.voxel_size_nm, labels=dataset.labels,
                        manifest=manifest, overwrite=bool(cfg.get("overwrite", False)))
    print(f"wrote {out}: {stack.shape[0]} slices translated {direction} in {seconds:.1f} s")
    return out

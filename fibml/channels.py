"""Names of image channels: a BSE voltage, or a named detector signal at a voltage.

A BSE stack at V kV has the key V, a float (2, "2" and "bse_2kV" all mean 2.0). Another
detector's signal (the in-lens and chamber SE2 detectors of random-forest-multi-detector.txt)
has the key "<detector>_<V>kV", a string ("se2_1kV"). Configs list channels under `voltages`
with either kind of key: `[1, 2, 4]` or `[se2_1kV, inlens_1kV]`.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["Channel", "channel_key", "channel_label"]

CHANNEL_RE = re.compile(r"^([a-z][a-z0-9]*)_(\d+(?:\.\d+)?)kV$", re.IGNORECASE)

Channel = float | str


def channel_key(channel) -> Channel:
    """The key of an image channel: a BSE voltage as a float (2, "2", "bse_2kV" -> 2.0), or the
    name of another detector's stack ("se2_1kV"). ValueError for anything else."""
    if isinstance(channel, bool):
        raise TypeError(f"{channel!r} is not an image channel (a voltage in kV or a name like se2_1kV)")
    if isinstance(channel, (int, float, np.integer, np.floating)):
        return float(channel)
    text = str(channel).strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = CHANNEL_RE.match(text)
    if not match:
        raise ValueError(
            f"{channel!r} is not an image channel: give a BSE voltage in kV (2) or a detector stack name "
            f"<detector>_<V>kV (se2_1kV, stored as se2_1kV.tif)"
        )
    return float(match.group(2)) if match.group(1).lower() == "bse" else text


def channel_label(channel) -> str:
    """A short name of a channel for tables and logs: 2.0 -> '2kV', 'se2_1kV' -> 'se2_1kV'."""
    key = channel_key(channel)
    return f"{key:g}kV" if isinstance(key, float) else key

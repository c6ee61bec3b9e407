"""Electron-beam physics for BSE imaging: backscatter coefficient, electron range, materials.

Energies E in keV, lengths in nm unless a name says otherwise, densities in g/cm^3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import periodictable

__all__ = [
    "Material",
    "MATERIALS",
    "backscatter_coefficient",
    "get_material",
    "kanaya_okayama_range_nm",
]


def backscatter_coefficient(Z, E_keV):
    """Backscatter coefficient eta of a bulk element (Hunger & Kuchler 1979).

    eta = E^m * C with m = 0.1382 - 0.9211/sqrt(Z) and
    C = 0.1904 - 0.2236 lnZ + 0.1292 (lnZ)^2 - 0.01491 (lnZ)^3.
    Fitted for 4-40 keV; at 0.5-4 keV it is an extrapolation (used as such by fibml).
    Z and E_keV broadcast like numpy arrays.
    """
    Z, E = _checked_Z_E(Z, E_keV)
    lnZ = np.log(Z)
    m = 0.1382 - 0.9211 / np.sqrt(Z)
    C = 0.1904 - 0.2236 * lnZ + 0.1292 * lnZ**2 - 0.01491 * lnZ**3
    return E**m * C


def kanaya_okayama_range_nm(Z, A, density_g_cm3, E_keV):
    """Kanaya-Okayama electron range in nm: R[um] = 0.0276 A E^1.67 / (Z^0.889 rho).

    Au (Z 79, A 197, rho 19.3) gives about 6, 18 and 59 nm at 1, 2 and 4 kV.
    """
    Z, E = _checked_Z_E(Z, E_keV)
    if np.any(np.asarray(density_g_cm3) <= 0):
        raise ValueError(f"density must be > 0 g/cm^3, got {density_g_cm3}")
    return 1000.0 * 0.0276 * np.asarray(A) * E**1.67 / (Z**0.889 * np.asarray(density_g_cm3))


def _checked_Z_E(Z, E_keV) -> tuple[np.ndarray, np.ndarray]:
    Z = np.asarray(Z, dtype=np.float64)
    E = np.asarray(E_keV, dtype=np.float64)
    if np.any(Z < 1):
        raise ValueError(f"atomic number Z must be >= 1, got {Z}")
    if np.any(E <= 0):
        raise ValueError(f"beam energy must be > 0 keV, got {E}")
    return Z, E


@dataclass(frozen=True)
class Material:
    """A homogeneous material: chemical formula and density (g/cm^3).

    Compounds follow Castaing's rule: eta is the mass-fraction-weighted mean of the elements'
    eta; the range uses mass-fraction-weighted Z and A.
    """

    name: str
    formula: str
    density_g_cm3: float
    mass_fractions: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        parsed = periodictable.formula(self.formula)
        fractions = {el.number: float(w) for el, w in parsed.mass_fraction.items()}
        object.__setattr__(self, "mass_fractions", fractions)

    @cached_property
    def Z(self) -> float:
        """Mass-fraction-weighted atomic number."""
        return float(sum(w * z for z, w in self.mass_fractions.items()))

    @cached_property
    def A(self) -> float:
        """Mass-fraction-weighted atomic mass (g/mol)."""
        return float(sum(w * periodictable.elements[z].mass for z, w in self.mass_fractions.items()))

    def backscatter_coefficient(self, E_keV):
        """Bulk backscatter coefficient eta at beam energy E_keV."""
        return sum(w * backscatter_coefficient(z, E_keV) for z, w in self.mass_fractions.items())

    def range_nm(self, E_keV):
        """Kanaya-Okayama electron range in this material, nm."""
        return kanaya_okayama_range_nm(self.Z, self.A, self.density_g_cm3, E_keV)


def _element(symbol: str) -> Material:
    el = getattr(periodictable, symbol)
    return Material(symbol, symbol, float(el.density))


# The pores of FIB-SEM samples of nanoporous metals are infiltrated with epoxy resin; it is
# modelled as bisphenol-A diglycidyl ether (C21H24O4), the base of common embedding resins.
MATERIALS: dict[str, Material] = {
    **{s: _element(s) for s in ("Au", "Ag", "Pt", "C", "Si", "Cu", "Al")},
    "epoxy": Material("epoxy", "C21H24O4", 1.2),
}


def get_material(material: str | Material) -> Material:
    """Look a material up by name in MATERIALS, or as an element symbol in periodictable."""
    if isinstance(material, Material):
        return material
    if material in MATERIALS:
        return MATERIALS[material]
    el = getattr(periodictable, str(material), None)
    if isinstance(el, periodictable.core.Element) and el.density:
        return _element(el.symbol)  # periodictable also knows elements by name ("gold")
    raise ValueError(
        f"unknown material {material!r}: expected one of {sorted(MATERIALS)} or an element symbol"
    )

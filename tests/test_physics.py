"""Backscatter coefficient (Hunger & Kuchler), Kanaya-Okayama range and materials against hand values."""

import numpy as np
import pytest

from fibml.synth.physics import (
    MATERIALS,
    Material,
    backscatter_coefficient,
    get_material,
    kanaya_okayama_range_nm,
)

# Worked by hand from DESIGN.md: eta = E^m C, m = 0.1382 - 0.9211/sqrt(Z),
# C = 0.1904 - 0.2236 lnZ + 0.1292 lnZ^2 - 0.01491 lnZ^3.
# Au, Z = 79, E = 20 keV: lnZ = 4.36945, m = 0.1382 - 0.9211/8.88819 = 0.034566,
#   C = 0.1904 - 0.97701 + 2.46668 - 1.24379 = 0.436268, 20^m = exp(0.034566 * 2.995732) = 1.10909,
#   eta = 0.48386.
ETA_AU_20KV = 0.4839
# C, Z = 6, E = 10 keV: lnZ = 1.791759, m = 0.1382 - 0.9211/2.449490 = -0.237842,
#   C = 0.1904 - 0.40064 + 0.41478 - 0.08577 = 0.118780, 10^m = exp(-0.237842 * 2.302585) = 0.57831,
#   eta = 0.06869.
ETA_C_10KV = 0.0687


def test_backscatter_gold_20kv_matches_hand_value():
    assert backscatter_coefficient(79, 20.0) == pytest.approx(ETA_AU_20KV, abs=0.01)
    assert backscatter_coefficient(79, 20.0) == pytest.approx(0.48, abs=0.01)


def test_backscatter_carbon_10kv_matches_hand_value():
    assert backscatter_coefficient(6, 10.0) == pytest.approx(ETA_C_10KV, abs=0.01)
    # tighter than the brief's 0.01: eta(C) itself is only 0.07
    assert backscatter_coefficient(6, 10.0) == pytest.approx(ETA_C_10KV, rel=0.01)


def test_backscatter_at_1kev_is_the_constant_C():
    # E^m = 1 at E = 1 keV whatever m is, so eta(Au, 1 keV) = C(79) = 0.436268 (worked above)
    assert backscatter_coefficient(79, 1.0) == pytest.approx(0.436268, rel=1e-5)


def test_backscatter_grows_with_Z_at_20kv():
    Z = np.array([4, 6, 8, 13, 14, 22, 29, 47, 50, 74, 78, 79, 82])
    eta = backscatter_coefficient(Z, 20.0)
    assert eta.shape == Z.shape
    assert np.all(np.diff(eta) > 0)
    assert eta[0] < 0.1 and eta[-1] > 0.45


def test_backscatter_broadcasts_like_numpy():
    eta = backscatter_coefficient(np.array([[6], [79]]), np.array([1.0, 2.0, 4.0]))
    assert eta.shape == (2, 3)
    assert eta[1, 0] == pytest.approx(backscatter_coefficient(79, 1.0))
    assert eta[0, 2] == pytest.approx(backscatter_coefficient(6, 4.0))


@pytest.mark.parametrize("energy, expected_nm", [(1.0, 6.0), (2.0, 18.0), (4.0, 59.0)])
def test_kanaya_okayama_range_of_gold(energy, expected_nm):
    # R = 0.0276 * 197 * E^1.67 / (79^0.889 * 19.3) um = 5.79 nm * E^1.67
    assert kanaya_okayama_range_nm(79, 197.0, 19.3, energy) == pytest.approx(expected_nm, rel=0.05)
    assert get_material("Au").range_nm(energy) == pytest.approx(expected_nm, rel=0.05)


def test_kanaya_okayama_range_scales_with_E_to_the_1_67():
    r1, r4 = kanaya_okayama_range_nm(79, 197.0, 19.3, [1.0, 4.0])
    assert r4 / r1 == pytest.approx(4.0**1.67, rel=1e-9)


def test_epoxy_is_castaing_mean_of_its_elements():
    # C21H24O4: M = 21*12.011 + 24*1.008 + 4*15.999 = 340.42; mass fractions C 0.7409, H 0.0711, O 0.1880
    epoxy = get_material("epoxy")
    assert epoxy.mass_fractions[6] == pytest.approx(0.7409, abs=1e-3)
    assert epoxy.mass_fractions[1] == pytest.approx(0.0711, abs=1e-3)
    assert epoxy.mass_fractions[8] == pytest.approx(0.1880, abs=1e-3)
    for energy in (1.0, 2.0, 4.0, 10.0, 20.0):
        by_hand = (
            0.7409 * backscatter_coefficient(6, energy)
            + 0.0711 * backscatter_coefficient(1, energy)
            + 0.1880 * backscatter_coefficient(8, energy)
        )
        assert epoxy.backscatter_coefficient(energy) == pytest.approx(by_hand, rel=2e-3)


@pytest.mark.parametrize("energy", [1.0, 2.0, 4.0, 10.0, 20.0])
def test_epoxy_eta_between_light_elements_and_far_below_gold(energy):
    light = [backscatter_coefficient(z, energy) for z in (1, 6, 8)]  # H, C, O
    eta_epoxy = get_material("epoxy").backscatter_coefficient(energy)
    assert min(light) < eta_epoxy < max(light)
    assert eta_epoxy < 0.35 * get_material("Au").backscatter_coefficient(energy)


@pytest.mark.parametrize("energy", [1.0, 2.0, 4.0])
def test_epoxy_range_is_far_longer_than_golds(energy):
    # (A_ep/A_Au) (Z_Au/Z_ep)^0.889 (rho_Au/rho_ep) = (11.98/196.97)(79/6.02)^0.889 (19.3/1.2) = 9.6
    ratio = get_material("epoxy").range_nm(energy) / get_material("Au").range_nm(energy)
    assert ratio == pytest.approx(9.6, rel=0.05)


def test_material_weighted_Z_and_A():
    epoxy = get_material("epoxy")
    assert epoxy.Z == pytest.approx(0.7409 * 6 + 0.0711 * 1 + 0.1880 * 8, abs=0.01)
    assert epoxy.A == pytest.approx(11.98, abs=0.02)
    gold = get_material("Au")
    assert (gold.Z, gold.density_g_cm3) == (79.0, pytest.approx(19.3, abs=0.05))


def test_get_material_by_name_symbol_and_instance():
    assert get_material("Au") is MATERIALS["Au"]
    iron = get_material("Fe")  # not in MATERIALS: looked up in periodictable
    assert iron.Z == 26 and iron.density_g_cm3 == pytest.approx(7.87, abs=0.01)
    assert get_material("gold").Z == 79  # periodictable also knows elements by name
    custom = Material("resin", "C2H4", 0.9)
    assert get_material(custom) is custom


@pytest.mark.parametrize("name", ["unobtainium", "Xx", "Au2"])
def test_get_material_error_names_the_unknown_material(name):
    with pytest.raises(ValueError, match=rf"unknown material '{name}'.*epoxy"):
        get_material(name)


@pytest.mark.parametrize("Z", [0, -3, 0.5])
def test_bad_atomic_number_raises(Z):
    with pytest.raises(ValueError, match="atomic number"):
        backscatter_coefficient(Z, 10.0)
    with pytest.raises(ValueError, match="atomic number"):
        kanaya_okayama_range_nm(Z, 197.0, 19.3, 10.0)


@pytest.mark.parametrize("energy", [0.0, -1.0, [1.0, -2.0]])
def test_bad_energy_raises(energy):
    with pytest.raises(ValueError, match="beam energy"):
        backscatter_coefficient(79, energy)
    with pytest.raises(ValueError, match="beam energy"):
        kanaya_okayama_range_nm(79, 197.0, 19.3, energy)


def test_bad_density_raises():
    with pytest.raises(ValueError, match="density"):
        kanaya_okayama_range_nm(79, 197.0, 0.0, 1.0)

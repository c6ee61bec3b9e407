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

# Worked by hand from DESIGN.md, to 6 significant digits (so asserted to rel 1e-5): eta = E^m C,
# m = 0.1382 - 0.9211/sqrt(Z), C = 0.1904 - 0.2236 lnZ + 0.1292 lnZ^2 - 0.01491 lnZ^3.
# Au, Z = 79, E = 20 keV: lnZ = 4.369448, sqrt(Z) = 8.888194, m = 0.1382 - 0.103632 = 0.034568,
#   C = 0.1904 - 0.977014 + 2.466680 - 1.243797 = 0.436268,
#   20^m = exp(0.034568 * 2.995732) = exp(0.103557) = 1.109109, eta = 0.483869.
ETA_AU_20KV = 0.483869
# C, Z = 6, E = 10 keV: lnZ = 1.791759, sqrt(Z) = 2.449490, m = 0.1382 - 0.376038 = -0.237838,
#   C = 0.1904 - 0.400637 + 0.414782 - 0.085768 = 0.118780 (0.1187802),
#   10^m = exp(-0.237838 * 2.302585) = 0.578312, eta = 0.0686921.
ETA_C_10KV = 0.0686921
RTOL = 1e-5  # the hand values carry 6 significant digits


def test_backscatter_gold_20kv_matches_hand_value():
    assert backscatter_coefficient(79, 20.0) == pytest.approx(ETA_AU_20KV, rel=RTOL)


def test_backscatter_carbon_10kv_matches_hand_value():
    assert backscatter_coefficient(6, 10.0) == pytest.approx(ETA_C_10KV, rel=RTOL)


def test_backscatter_at_1kev_is_the_constant_C():
    # E^m = 1 at E = 1 keV whatever m is, so eta(Au, 1 keV) = C(79) = 0.436268 (worked above)
    assert backscatter_coefficient(79, 1.0) == pytest.approx(0.436268, rel=RTOL)
    # and eta(C, 1 keV) = C(6) = 0.1187802
    assert backscatter_coefficient(6, 1.0) == pytest.approx(0.1187802, rel=RTOL)


def test_exponent_m_carries_the_energy_dependence():
    # eta(E2) / eta(E1) = (E2 / E1)^m: Au, m = 0.034568, 20 / 10 keV: 2^0.034568 = 1.024253;
    # C, m = -0.237838: 2^-0.237838 = exp(-0.164856) = 0.848015 (heavy elements brighten, light ones darken with E)
    assert backscatter_coefficient(79, 20.0) / backscatter_coefficient(79, 10.0) == pytest.approx(1.024253, rel=RTOL)
    assert backscatter_coefficient(6, 20.0) / backscatter_coefficient(6, 10.0) == pytest.approx(0.848015, rel=RTOL)


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


# R = 1000 * 0.0276 * A * E^1.67 / (Z^0.889 rho) nm; Au with A = 197, rho = 19.3:
# 79^0.889 = exp(0.889 * 4.369448) = 48.6379, R(1 keV) = 5437.2 / (48.6379 * 19.3) = 5.79199 nm,
# 2^1.67 = exp(1.157556) = 3.182147, 4^1.67 = exp(2.315111) = 10.126047
@pytest.mark.parametrize("energy, expected_nm", [(1.0, 5.79199), (2.0, 18.4309), (4.0, 58.6500)])
def test_kanaya_okayama_range_of_gold(energy, expected_nm):
    assert kanaya_okayama_range_nm(79, 197.0, 19.3, energy) == pytest.approx(expected_nm, rel=RTOL)
    # periodictable's A of gold is 196.96657 (not 197): 1.7e-4 less
    assert get_material("Au").range_nm(energy) == pytest.approx(expected_nm * 196.96657 / 197.0, rel=RTOL)


def test_kanaya_okayama_range_scales_with_E_to_the_1_67():
    r1, r4 = kanaya_okayama_range_nm(79, 197.0, 19.3, [1.0, 4.0])
    assert r4 / r1 == pytest.approx(4.0**1.67, rel=1e-9)


def test_epoxy_is_castaing_mean_of_its_elements():
    # C21H24O4: M = 21*12.011 + 24*1.008 + 4*15.999 = 252.231 + 24.192 + 63.996 = 340.419;
    # mass fractions C 0.740943, H 0.0710654, O 0.187992 (IUPAC conventional weights, as periodictable)
    epoxy = get_material("epoxy")
    fractions = {6: 0.740943, 1: 0.0710654, 8: 0.187992}
    for z, fraction in fractions.items():
        assert epoxy.mass_fractions[z] == pytest.approx(fraction, rel=RTOL)
    for energy in (1.0, 2.0, 4.0, 10.0, 20.0):
        by_hand = sum(w * backscatter_coefficient(z, energy) for z, w in fractions.items())
        assert epoxy.backscatter_coefficient(energy) == pytest.approx(by_hand, rel=RTOL)


@pytest.mark.parametrize("energy", [1.0, 2.0, 4.0, 10.0, 20.0])
def test_epoxy_eta_between_light_elements_and_far_below_gold(energy):
    light = [backscatter_coefficient(z, energy) for z in (1, 6, 8)]  # H, C, O
    eta_epoxy = get_material("epoxy").backscatter_coefficient(energy)
    assert min(light) < eta_epoxy < max(light)
    assert eta_epoxy < 0.35 * get_material("Au").backscatter_coefficient(energy)


@pytest.mark.parametrize("energy", [1.0, 2.0, 4.0])
def test_epoxy_range_is_far_longer_than_golds(energy):
    # (A_ep/A_Au) (Z_Au/Z_ep)^0.889 (rho_Au/rho_ep), with Z_ep = 6.020657 and A_ep = 11.978779
    # (test_material_weighted_Z_and_A): 0.0608156 * 13.121495^0.889 * 16.083333
    # = 0.0608156 * 9.860418 * 16.083333 = 9.64458, the same at every energy (E^1.67 cancels)
    ratio = get_material("epoxy").range_nm(energy) / get_material("Au").range_nm(energy)
    assert ratio == pytest.approx(9.64458, rel=RTOL)


def test_material_weighted_Z_and_A():
    # Z = 0.740943 * 6 + 0.0710654 * 1 + 0.187992 * 8 = 6.020657;
    # A = 0.740943 * 12.011 + 0.0710654 * 1.008 + 0.187992 * 15.999 = 11.978779
    epoxy = get_material("epoxy")
    assert epoxy.Z == pytest.approx(6.020657, rel=RTOL)
    assert epoxy.A == pytest.approx(11.978779, rel=RTOL)
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


def test_results_are_float64_whatever_the_input_dtype():
    # float32 or integer inputs are computed in float64: the hand value to its 6 digits
    for Z, E in ((np.float32(79), np.float32(20.0)), (np.int32(79), np.int64(20)), ([79], [20])):
        eta = backscatter_coefficient(Z, E)
        assert np.asarray(eta).dtype == np.float64
        assert float(np.ravel(eta)[0]) == pytest.approx(ETA_AU_20KV, rel=RTOL)
    assert kanaya_okayama_range_nm(np.float32(79), 197, 19.3, np.float32(1.0)).dtype == np.float64
    # float32 would lose digits: eta of Au at 20 kV agrees with the float64 formula to 1e-12
    assert backscatter_coefficient(np.float32(79), np.float32(20.0)) == pytest.approx(0.48386884078123, rel=1e-12)
    # the range too: E**1.67 in float32 would be off by about 1e-8
    assert kanaya_okayama_range_nm(79, 196.97, 19.3, np.float32(20.0)) == pytest.approx(
        1000 * 0.0276 * 196.97 * 20.0**1.67 / (79**0.889 * 19.3), rel=1e-12)


def test_light_materials_below_one_gram_per_cm3_are_accepted():
    # a resin of 0.9 g/cm^3 (C2H4): the range scales with 1 / density
    assert kanaya_okayama_range_nm(6, 12.011, 0.9, 2.0) == pytest.approx(
        kanaya_okayama_range_nm(6, 12.011, 1.8, 2.0) * 2, rel=1e-12)


def test_elements_are_named_by_their_symbol():
    assert get_material("Au").name == "Au" and get_material("Fe").name == "Fe"

"""How a retention target is split between audio and video (algorithm §7, ``retention_split``).

``OmniZipConfig.resolve_ratios`` solves its rule by bisection; these tests check it against
closed forms of each rule, the target it must meet, and its bounds. Without a target it must
return the configured ratios unchanged (the default configuration and the presets).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnizip import OmniZipConfig
from omnizip.config import PRESETS

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
SPLITS = ("scale", "shift", "even")


def expected_kept(config: OmniZipConfig, ra: float, rv: float, n_a: int, n_v: int) -> float:
    """The kept count the rule targets: salient + anchors (capped at N_a) + video."""
    extra = config.contextual_ratio if config.g > 0 else 0.0
    return min((1 - ra + extra) * n_a, n_a) + (1 - rv) * n_v


def lowest_reachable(config: OmniZipConfig, n_a: int) -> float:
    """No rule keeps fewer than the anchors (and 0 video)."""
    extra = config.contextual_ratio if config.g > 0 else 0.0
    return min(extra, 1.0) * n_a


counts = st.integers(0, 3000)
rhos = st.floats(0.0, 0.95)


@SETTINGS
@given(n_a=counts, n_v=counts, ra=rhos, rv=rhos, c=st.sampled_from([0.0, 0.05, 0.2]),
       g=st.sampled_from([0, 3]), retention=st.floats(0.01, 1.0), split=st.sampled_from(SPLITS))
def test_every_rule_meets_a_reachable_target_inside_the_bounds(n_a, n_v, ra, rv, c, g, retention,
                                                               split):
    config = OmniZipConfig(rho_audio=ra, rho_video=rv, contextual_ratio=c, g=g,
                           retention=retention, retention_split=split)
    got_a, got_v = config.resolve_ratios(n_a, n_v)
    assert 0.0 <= got_a < 1.0 and 0.0 <= got_v < 1.0
    total = n_a + n_v
    target = retention * total
    if total and target >= lowest_reachable(config, n_a) + 1e-9:
        assert expected_kept(config, got_a, got_v, n_a, n_v) == pytest.approx(target, abs=1e-6 * total + 1e-9)


@SETTINGS
@given(n_a=st.integers(1, 3000), n_v=st.integers(1, 3000), preset=st.sampled_from(sorted(PRESETS)),
       retention=st.floats(0.05, 1.0))
def test_scale_keeps_the_presets_audio_to_video_proportion(n_a, n_v, preset, retention):
    """Closed form where no bound applies: k_a = s k_a0, k_v = s k_v0, s = K / (k_a0 N_a + k_v0 N_v)."""
    config = OmniZipConfig.preset(preset, retention=retention)
    ra0, rv0 = PRESETS[preset]
    ka0, kv0 = 1 - ra0 + 0.05, 1 - rv0
    s = retention * (n_a + n_v) / (ka0 * n_a + kv0 * n_v)
    got_a, got_v = config.resolve_ratios(n_a, n_v)
    if s * ka0 <= 1 and s * ka0 >= 0.05 + 1e-9:  # inside the bounds: the closed form holds
        assert 1 - got_a + 0.05 == pytest.approx(s * ka0, abs=1e-9)
        assert 1 - got_v == pytest.approx(s * kv0, abs=1e-9)


@SETTINGS
@given(n_a=st.integers(1, 3000), n_v=st.integers(1, 3000), preset=st.sampled_from(sorted(PRESETS)),
       retention=st.floats(0.05, 1.0))
def test_shift_and_even_closed_forms(n_a, n_v, preset, retention):
    """shift: rho_a = ra0 + t, rho_v = rv0 + t; even: both kept fractions equal K / N."""
    ra0, rv0 = PRESETS[preset]
    total = n_a + n_v
    t = (0.75 if preset == "45" else 0.65) * n_a + (1 - rv0) * n_v - retention * total
    t /= total
    got_a, got_v = OmniZipConfig.preset(preset, retention=retention,
                                        retention_split="shift").resolve_ratios(n_a, n_v)
    if ra0 + t >= 0 and rv0 + t < 1 and 1 - (ra0 + t) + 0.05 <= 1:
        assert got_a == pytest.approx(ra0 + t, abs=1e-9)
        assert got_v == pytest.approx(rv0 + t, abs=1e-9)
    got_a, got_v = OmniZipConfig.preset(preset, retention=retention,
                                        retention_split="even").resolve_ratios(n_a, n_v)
    if 0.05 + 1e-9 <= retention < 1:
        assert 1 - got_a + 0.05 == pytest.approx(retention, abs=1e-9)
        assert 1 - got_v == pytest.approx(retention, abs=1e-9)


@SETTINGS
@given(n_a=counts, n_v=counts, split=st.sampled_from(SPLITS),
       pair=st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)))
def test_more_retention_never_drops_more_of_either_modality(n_a, n_v, split, pair):
    low, high = sorted(pair)
    a_low, v_low = OmniZipConfig(retention=low, retention_split=split).resolve_ratios(n_a, n_v)
    a_high, v_high = OmniZipConfig(retention=high, retention_split=split).resolve_ratios(n_a, n_v)
    assert a_high <= a_low + 1e-12 and v_high <= v_low + 1e-12


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_without_a_target_the_configured_ratios_come_back_unchanged(split, preset):
    config = OmniZipConfig.preset(preset, retention_split=split)
    assert config.resolve_ratios(200, 288) == PRESETS[preset]
    assert OmniZipConfig(retention_split=split).resolve_ratios(7, 0) == (0.3, 0.6)


def test_scale_at_the_presets_own_share_gives_the_preset():
    """A retention equal to what the preset keeps on this mix changes nothing (up to rounding)."""
    n_a, n_v = 50, 598
    share = (0.75 * n_a + 0.4 * n_v) / (n_a + n_v)
    ra, rv = OmniZipConfig.preset("45", retention=share).resolve_ratios(n_a, n_v)
    assert ra == pytest.approx(0.3, abs=1e-12) and rv == pytest.approx(0.6, abs=1e-12)


def test_shift_starves_video_where_scale_does_not():
    """The case that motivated ``scale`` (issue 22's study: 56-px frames, audio 86% of the
    tokens): at retention 0.25 the additive shift leaves no video at all."""
    n_a, n_v = 200, 32
    _, rv_shift = OmniZipConfig(retention=0.25, retention_split="shift").resolve_ratios(n_a, n_v)
    ra, rv = OmniZipConfig(retention=0.25).resolve_ratios(n_a, n_v)
    assert 1 - rv_shift < 1e-6
    assert (1 - ra + 0.05) / (1 - rv) == pytest.approx(0.75 / 0.4)
    assert 1 - rv > 0.1


def test_retention_split_is_validated_with_its_name():
    with pytest.raises(ValueError, match=r"retention_split must be one of .*'scale'.*got 'add'"):
        OmniZipConfig(retention_split="add")
    assert OmniZipConfig.from_dict(OmniZipConfig(retention_split="even").to_dict()).retention_split == "even"

    config = OmniZipConfig(token_budget=90)  # absolute targets follow the same rule
    ra, rv = config.resolve_ratios(100, 100)
    assert math.isclose(expected_kept(config, ra, rv, 100, 100), 90, abs_tol=1e-9)
    assert math.isclose((1 - ra + 0.05) / (1 - rv), 0.75 / 0.4, rel_tol=1e-9)

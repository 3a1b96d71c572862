"""Blockwise audio scoring (algorithm §3) against a straightforward full-softmax computation.

The independent computation below forms each segment's whole ``[H, n, n]`` attention in
float64 (small inputs only) and sums it over heads and queries. The blockwise implementation
must match it for several streams of unequal and odd lengths, zero-length streams, encoder
windows, caps small enough to cut one softmax row's queries into many tiles, and fp16 / bf16
/ fp32 inputs; its block plan must cover every (segment, head, query) once and mask only the
groups that hold padding.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import LargestTensor
from hypothesis import given, settings
from hypothesis import strategies as st

from omnizip import audio_attention_scores
from omnizip.core.scores import plan_score_blocks


def full_softmax_scores(query, key, segments, scale=None):
    """float64 ``[T]``: per segment ``(start, stop)``, softmax(Q K^T * scale) over the whole
    segment for every head, summed over heads and queries."""
    q, k = query.double(), key.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(q.shape[0], dtype=torch.float64)
    for start, stop in segments:
        if stop > start:
            logits = torch.einsum("ihd,jhd->hij", q[start:stop], k[start:stop]) * scale
            out[start:stop] = torch.softmax(logits, dim=-1).sum(dim=(0, 1))
    return out


def spans(lengths):
    bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
    return list(itertools.pairwise(bounds))


def qk(frames, heads, head_dim, seed, dtype=torch.float32, spread=1.5):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(frames, heads, head_dim, generator=gen) * spread
    k = torch.randn(frames, heads, head_dim, generator=gen) * spread
    return q.to(dtype), k.to(dtype)


def assert_scores(got, want, tol=2e-5):
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


# Caps from "everything in one tile" down to one query row per tile (and below a row).
CAPS = [1 << 24, 4096, 300, 37, 1]


@pytest.mark.parametrize("block_elements", CAPS)
@pytest.mark.parametrize("lengths", [[13], [7, 1, 13, 4, 9], [0, 5, 0, 3, 0], [10, 10, 10], [3, 11, 11]])
def test_global_several_streams(lengths, block_elements):
    q, k = qk(sum(lengths), 3, 8, seed=sum(lengths) + block_elements)
    qc, kc = q.clone(), k.clone()
    got = audio_attention_scores(q, k, stream_lengths=lengths, block_elements=block_elements)
    assert_scores(got, full_softmax_scores(q, k, spans(lengths)))
    for (start, stop), n in zip(spans(lengths), lengths, strict=True):  # rows sum to one, no leaks
        assert abs(float(got[start:stop].double().sum()) - 3 * n) < 1e-4 * max(1, n)
    assert torch.equal(q, qc) and torch.equal(k, kc)


@pytest.mark.parametrize("block_elements", CAPS)
def test_windowed_encoder_windows(block_elements):
    # Streams of 21, 16 and 5 frames cut into windows of at most 8 (like n_window chunks).
    windows = [8, 8, 5, 8, 8, 5]
    cu = torch.tensor([0, *windows], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    q, k = qk(sum(windows), 2, 16, seed=block_elements)
    got = audio_attention_scores(q, k, scope="windowed", cu_seqlens=cu, block_elements=block_elements)
    assert_scores(got, full_softmax_scores(q, k, spans(windows)))
    # stream_lengths play no part in the windowed scope
    again = audio_attention_scores(q, k, scope="windowed", cu_seqlens=cu.tolist(),
                                   stream_lengths=[21, 16, 5], block_elements=block_elements)
    torch.testing.assert_close(again, got)


def test_windowed_single_window_is_global():
    q, k = qk(19, 2, 8, seed=5)
    glob = audio_attention_scores(q, k)
    win = audio_attention_scores(q, k, scope="windowed", cu_seqlens=[0, 19])
    torch.testing.assert_close(win, glob)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 2e-5), (torch.bfloat16, 2e-5)])
@pytest.mark.parametrize("scope", ["global", "windowed"])
def test_low_precision_inputs_scored_in_float32(dtype, tol, scope):
    lengths = [9, 14, 6]
    q, k = qk(sum(lengths), 4, 8, seed=3, dtype=dtype, spread=1.0)
    kw = (dict(stream_lengths=lengths) if scope == "global"
          else dict(cu_seqlens=torch.tensor([0, 9, 23, 29])))
    got = audio_attention_scores(q, k, scope=scope, block_elements=500, **kw)
    # the exact scores of the values the inputs hold (compute is float32 after the upcast)
    assert_scores(got, full_softmax_scores(q, k, spans(lengths)), tol)


def test_custom_scale_and_large_logits():
    # Logits of several hundred: a softmax without the row maximum would overflow.
    lengths = [12, 5]
    q, k = qk(17, 2, 8, seed=9, spread=6.0)
    got = audio_attention_scores(q, k, stream_lengths=lengths, scale=2.0, block_elements=64)
    want = full_softmax_scores(q, k, spans(lengths), scale=2.0)
    assert torch.isfinite(got).all()
    assert_scores(got, want, 1e-4)


def test_gradients_match_the_full_computation():
    lengths = [6, 9]
    q, k = qk(15, 2, 4, seed=4)
    q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
    q32, k32 = q.clone().requires_grad_(), k.clone().requires_grad_()
    weights = torch.linspace(-1, 2, 15, dtype=torch.float64)
    (full_softmax_scores(q64, k64, spans(lengths)) * weights).sum().backward()
    got = audio_attention_scores(q32, k32, stream_lengths=lengths, block_elements=50)
    (got.double() * weights).sum().backward()
    torch.testing.assert_close(q32.grad.double(), q64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(k32.grad.double(), k64.grad, rtol=1e-4, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 17), min_size=1, max_size=5),
    heads=st.integers(1, 3),
    head_dim=st.sampled_from([1, 2, 8]),
    block_elements=st.integers(1, 3000),
    windowed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_blockwise_equals_full(lengths, heads, head_dim, block_elements, windowed, seed):
    q, k = qk(sum(lengths), heads, head_dim, seed)
    if windowed:
        cu = [0, *torch.tensor(lengths).cumsum(0).tolist()]
        got = audio_attention_scores(q, k, scope="windowed", cu_seqlens=cu, block_elements=block_elements)
    else:
        got = audio_attention_scores(q, k, stream_lengths=lengths, block_elements=block_elements)
    assert_scores(got, full_softmax_scores(q, k, spans(lengths)))


# ----------------------------------------------------------------------------- block plan

def covered(plan, lengths, heads):
    """Count how often each (frame as a query, head) is scored, from the plan alone."""
    n_frames = sum(lengths)
    count = torch.zeros(n_frames + 1, heads, dtype=torch.int64)
    for group in plan.groups:
        sink = plan.group_sink(group)
        for head_rows, query_rows in group.tiles():
            rows = sink[:, query_rows].flatten()
            count[rows, head_rows] += 1
    return count[:n_frames]


@pytest.mark.parametrize("cap", [1, 50, 700, 1 << 22])
@pytest.mark.parametrize("lengths", [[40], [7, 1, 13, 4, 9], [100, 100, 100, 37], [0, 3, 0]])
def test_plan_covers_every_query_once_within_the_cap(lengths, cap):
    heads = 4
    plan = plan_score_blocks(torch.tensor(lengths), heads, cap, torch.device("cpu"))
    assert torch.equal(covered(plan, lengths, heads), torch.ones(sum(lengths), heads, dtype=torch.int64))
    for group in plan.groups:
        tile = group.rows * group.head_step * group.query_step * group.width
        assert tile <= max(cap, group.width)  # one query row against its keys at least
        sink = plan.group_sink(group)
        padding = sink == sum(lengths)
        assert group.padded == bool(padding.any())  # masked exactly when it holds padding


def test_plan_masks_only_groups_with_a_shorter_segment():
    # 30 full encoder windows and one short tail: one group pads, the rest need no mask.
    lengths = [100] * 30 + [37]
    plan = plan_score_blocks(torch.tensor(lengths), 20, 1 << 22, torch.device("cpu"))
    assert sum(group.padded for group in plan.groups) == 1
    assert sum(group.rows for group in plan.groups) == 31
    # one long stream is never padded, whatever the cap
    one = plan_score_blocks(torch.tensor([3000]), 20, 1 << 16, torch.device("cpu"))
    assert not any(group.padded for group in one.groups)




@pytest.mark.parametrize("scope", ["global", "windowed"])
def test_temporaries_bounded_by_input_or_cap(scope):
    lengths = [300, 120, 181]
    q, k = qk(sum(lengths), 4, 8, seed=1)
    kw = (dict(stream_lengths=lengths) if scope == "global"
          else dict(cu_seqlens=[0, 100, 200, 300, 400, 420, 520, 601]))
    block = 4096
    with LargestTensor() as probe:
        got = audio_attention_scores(q, k, scope=scope, block_elements=block, **kw)
    assert probe.largest <= max(q.numel(), block)
    segments = spans(lengths) if scope == "global" else spans([100, 100, 100, 100, 20, 100, 81])
    assert_scores(got, full_softmax_scores(q, k, segments))

"""Decoding arbitrary bytes: only ProtocolError, and bounded allocation (PROTOCOL.md §9)."""

import json
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jikimi import protocol as p
from jikimi_host.paths import PROTOCOL_VECTORS
from strategies import any_frame

CPYTHON_FRAMES = 10_000
BATCH = 10
MICROPYTHON_FRAMES = 5_000
MAX_ALLOC_PER_DECODE = 1024  # bytes; one Message with a handful of small ints


def check_decode(frame: bytes) -> None:
    """Decode `frame`; a result must be consistent with the encoder, an error must be ours."""
    try:
        message = p.decode(frame)
    except p.ProtocolError as err:
        assert err.code in (p.E_BAD_LENGTH, p.E_BAD_VERSION, p.E_UNKNOWN_TYPE)
        return
    assert len(frame) <= p.MAX_FRAME
    encoded = p.encode(message)
    if len(frame) < len(encoded):  # an older peer's frame, without the fields appended since (§11)
        older = 2 + struct.calcsize(p._OLDER_BODY[message.type])
        assert frame[:older] == encoded[:older]
        return
    # Known types: the frame is the encoding plus ignored appended bytes; unknown: exact.
    assert frame[: len(encoded)] == encoded
    if not message.known:
        assert encoded == frame


def test_cpython_decodes_ten_thousand_random_and_mutated_frames():
    fed = 0

    @settings(max_examples=CPYTHON_FRAMES // BATCH, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(frames=st.lists(any_frame, min_size=BATCH, max_size=BATCH))
    def feed(frames):
        nonlocal fed
        for frame in frames:
            check_decode(frame)
        fed += len(frames)

    feed()
    assert fed >= CPYTHON_FRAMES


@pytest.mark.parametrize("size", [0, 1, 21, 4096, 1_000_000])
def test_oversized_or_tiny_buffers_are_rejected_without_copying(size):
    frame = bytes([p.VERSION]) * size
    tracemalloc.start()
    try:
        with pytest.raises(p.ProtocolError) as caught:
            p.decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == p.E_BAD_LENGTH
    assert peak < 4096


@pytest.mark.parametrize("not_bytes", ["0101", 257, None, [1, 1]])
def test_non_buffers_are_a_protocol_error(not_bytes):
    with pytest.raises(p.ProtocolError, match="not a byte buffer"):
        p.decode(not_bytes)


@pytest.mark.micropython
@pytest.mark.parametrize("seed", [1, 2])
def test_micropython_decodes_a_seeded_batch_with_bounded_allocation(micropython, seed):
    result = micropython.script(
        "protocol_fuzz.py", str(PROTOCOL_VECTORS), str(seed), str(MICROPYTHON_FRAMES)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["frames"] == MICROPYTHON_FRAMES
    assert summary["decoded"] > 0 and summary["rejected"] > 0  # both paths were exercised
    assert summary["max_alloc"] <= MAX_ALLOC_PER_DECODE
    assert summary["texts_loaded"] is False  # rejecting frames never loaded the error texts

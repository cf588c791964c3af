"""A photo too small to screen is refused by name, size and minimum; decode memory is a
budget that uploads wait for, first come first served, and a wait that runs out is 503."""

from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from skinscreen.core.memory import MIB, TRIM_AFTER_BYTES, DecodeBudget, DecodeBudgetTimeoutError
from skinscreen.gateway import images
from skinscreen.gateway.images import DecoderBusyError, check_image
from skinscreen.gateway.settings import Settings as GatewaySettings
from tests.conftest import DESIGN_EXAMPLE
from tests.serving.conftest import Keys
from tests.waiting import wait_until

MIN_SIDE = GatewaySettings.model_fields["MIN_IMAGE_SIDE"].default


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 150, 120)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 150, 120)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("dot.png", _png(1, 1), "1x1"),
        ("thumbnail.jpg", _jpeg(640, MIN_SIDE - 1), f"640x{MIN_SIDE - 1}"),
    ],
)
def test_a_photo_below_the_minimum_side_is_422_naming_its_size(
    keys: Keys, idle_gateway: str, name: str, data: bytes, size: str
) -> None:
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=30) as client:
        response = client.post(
            "/v1/screenings",
            files={"image": (name, data, "application/octet-stream")},
            data={"clinical": json.dumps(DESIGN_EXAMPLE)},
        )
    assert response.status_code == 422, response.text
    detail = str(response.json()["detail"])
    assert "image" in detail
    assert size in detail
    assert f"at least {MIN_SIDE} pixels" in detail


def test_a_photo_at_the_minimum_side_is_checked_as_any_other() -> None:
    checked = check_image(_jpeg(MIN_SIDE, 400), 50_000_000, MIN_SIDE, DecodeBudget(MIB), 1)
    assert (checked.width, checked.height) == (MIN_SIDE, 400)


def test_a_check_that_cannot_get_decode_memory_in_time_is_503_with_retry_after() -> None:
    budget = DecodeBudget(MIB)
    with budget.hold(MIB), pytest.raises(DecoderBusyError) as refused:
        check_image(_jpeg(2000, 2000), 50_000_000, MIN_SIDE, budget, 0.2)
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "1"}
    assert "DECODE_MEMORY_BUDGET_MB" in str(refused.value)


def test_decodes_wait_their_turn_and_never_exceed_the_budget() -> None:
    budget = DecodeBudget(10)
    order: list[str] = []
    first = budget.hold(6)
    first.__enter__()

    def decode(name: str, cost: int) -> None:
        with budget.hold(cost, 10):
            order.append(name)

    # The large one asked first: the small one, which would fit now, waits behind it.
    large = threading.Thread(target=decode, args=("large", 8))
    large.start()
    wait_until(lambda: budget.waiting == 1, "the large decode waits")
    small = threading.Thread(target=decode, args=("small", 2))
    small.start()
    wait_until(lambda: budget.waiting == 2, "the small decode waits behind it")
    assert order == []
    first.__exit__(None, None, None)
    large.join(5)
    small.join(5)
    assert order == ["large", "small"]
    assert budget.peak_in_use <= budget.budget
    assert budget.in_use == 0
    # Larger than the whole budget: runs alone rather than never.
    with budget.hold(100, 0):
        assert budget.in_use == budget.budget
    with budget.hold(6), pytest.raises(DecodeBudgetTimeoutError):
        budget.hold(6, 0).__enter__()


def _noise(fmt: str, **options: object) -> bytes:
    """A photo-sized image of noise (it compresses badly, like a photo)."""
    pixels = np.random.default_rng(17).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


NOISE = {
    "baseline JPEG": _noise("JPEG"),
    "progressive JPEG": _noise("JPEG", progressive=True),
    "PNG": _noise("PNG"),
}


@pytest.mark.parametrize("kind", NOISE)
def test_the_bounded_check_accepts_a_complete_photo(kind: str) -> None:
    """The check decodes a bounded prefix only (module docstring), far less than these."""
    data = NOISE[kind]
    assert len(data) > 4 * max(images.JPEG_PREFIX_BYTES, 64 * 1024)
    checked = check_image(data, 50_000_000, MIN_SIDE, DecodeBudget(64 * MIB), 1)
    assert (checked.width, checked.height) == (1200, 900)


@pytest.mark.parametrize("kind", NOISE)
@pytest.mark.parametrize("kept", [0.5, 0.9, 0.999])
def test_a_photo_cut_anywhere_past_what_is_decoded_is_still_422(kind: str, kept: float) -> None:
    """A file cut short lacks its end (JPEG's end-of-image marker, PNG's IEND), wherever the
    cut falls, even far past the prefix the check decodes."""
    data = NOISE[kind]
    with pytest.raises(images.CorruptImageError) as refused:
        check_image(data[: int(len(data) * kept)], 50_000_000, MIN_SIDE, DecodeBudget(64 * MIB), 1)
    assert "truncated or corrupt" in str(refused.value)
    assert "send the complete original photo" in str(refused.value)


def test_a_png_damaged_past_what_is_inflated_fails_its_chunk_crc() -> None:
    data = bytearray(NOISE["PNG"])
    data[-1000] ^= 0xFF  # inside the last IDAT chunk
    with pytest.raises(images.CorruptImageError, match="bad CRC"):
        check_image(bytes(data), 50_000_000, MIN_SIDE, DecodeBudget(64 * MIB), 1)


def test_a_jpeg_whose_coded_data_cannot_be_decoded_is_422() -> None:
    """The structure is complete, but a Huffman table is impossible (more codes than its bit
    lengths allow): Pillow opens the header without reading it; the bounded decode fails."""
    data = bytearray(NOISE["baseline JPEG"])
    table = data.index(b"\xff\xc4")  # DHT: marker, length, class and id, 16 counts
    data[table + 5 : table + 21] = bytes([255] * 16)
    with pytest.raises(images.CorruptImageError) as refused:
        check_image(bytes(data), 50_000_000, MIN_SIDE, DecodeBudget(64 * MIB), 1)
    assert "the JPEG file is truncated or corrupt" in str(refused.value)


def test_the_heap_is_trimmed_after_large_decodes_not_after_each_small_one() -> None:
    budget = DecodeBudget(1024 * MIB)
    small = TRIM_AFTER_BYTES // 8
    for _ in range(7):
        with budget.hold(small):
            pass
    assert budget.trims == 0
    with budget.hold(small):
        pass
    assert budget.trims == 1  # the eighth brought the total to TRIM_AFTER_BYTES
    with budget.hold(TRIM_AFTER_BYTES), budget.hold(small):
        pass
    assert budget.trims == 2  # one large photo: trimmed once nothing decodes

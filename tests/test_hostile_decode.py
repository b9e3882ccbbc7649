"""The decoder against the hostile corpus and a fuzzer: every good file decodes, every bad one has a reason, nothing raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hostile import animated, encode, hostile_bytes, picture, sixteen_bit, write_hostile_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclf.data.decode import decode_bytes, decode_file

RED = (220, 30, 30)


@pytest.mark.parametrize("policy", ["squash", "crop", "pad"])
def test_every_hostile_file_decodes_or_has_a_one_line_reason(tmp_path: Path, policy: str) -> None:
    for file in write_hostile_corpus(tmp_path / "corpus", RED):
        for size in (None, (16, 16)):
            decoded = decode_file(file.path, size, policy)  # type: ignore[arg-type]
            assert (decoded.error == "") == file.good, (file.kind, decoded.error)
            if file.good and size is not None:
                assert decoded.pixels is not None and decoded.pixels.shape == (16, 16, 3), file.kind
                if file.kind != "sixteen-bit-png":  # grey: 16-bit files carry one channel
                    centre = decoded.pixels[8, 8].astype(int)
                    assert centre[0] > 150 and centre[1] < 100 or policy == "pad", (file.kind, centre.tolist())
            if not file.good:
                assert decoded.pixels is None and "\n" not in decoded.error, file.kind


def test_bombs_are_refused_from_the_header_alone() -> None:
    for kind, (data, _, good) in hostile_bytes(RED).items():
        if kind.startswith("bomb-"):
            assert not good and len(data) < 2000
            assert "decompression bomb" in decode_bytes(data, (16, 16)).error


SEEDS = [encode(picture(RED), fmt) for fmt in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "ICO", "TGA")]
SEEDS += [animated("GIF", RED), sixteen_bit(90), encode(picture(RED).convert("CMYK"), "TIFF"),
          encode(Image.new("F", (8, 8)), "TIFF"), encode(Image.new("I;16", (8, 8)), "TIFF")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real image file of some format with a few bytes overwritten, cut out or inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 12))):
        position = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["set", "cut", "insert"]))
        if operation == "set":
            data[position] = draw(st.integers(0, 255))
        elif operation == "cut":
            del data[position:position + draw(st.integers(1, 64))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            break
    return bytes(data)


FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@FUZZ
@given(data=st.one_of(st.binary(max_size=512), mutated()))
def test_fuzzed_bytes_never_raise(data: bytes) -> None:
    for size, policy in ((None, "squash"), ((16, 16), "crop"), ((8, 12), "pad")):
        decoded = decode_bytes(data, size, policy)  # type: ignore[arg-type]
        assert (decoded.pixels is None) == bool(decoded.error) or size is None
        if decoded.pixels is not None:
            assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape[:2] == size


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=mutated())
def test_fuzzed_files_never_raise(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "image.bin"
    path.write_bytes(data)
    decoded = decode_file(path, (16, 16))
    assert decoded.error or decoded.pixels is not None

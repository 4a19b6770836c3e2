import zlib

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from streams.gram_hash import code_points, window_crc32, windows_touching

# ASCII, two-, three- and four-byte UTF-8, the edges between them and lone surrogates.
_CHARS = st.sampled_from(["a", "Z", " ", "\x00", "\x7f", "\x80", "\u00e9", "\u07ff", "\u0800", "\u3053",
                          "\ud800", "\udfff", "\uffff", "\U00010000", "\U0001f600", "\U0010ffff"])


def _reference(prefix: bytes, text: str, width: int) -> list[int]:
    return [zlib.crc32(prefix + text[i:i + width].encode("utf-8", "surrogatepass"))
            for i in range(len(text) - width + 1)]


@given(st.text(_CHARS, max_size=24) | st.text(max_size=24), st.sampled_from([b"c4:", b""]),
       st.integers(min_value=1, max_value=6))
@example("free offer", b"c4:", 4)
@example("abc", b"c4:", 4)
def test_every_window_hashes_as_zlib_hashes_its_utf8(text: str, prefix: bytes, width: int) -> None:
    crc = window_crc32(prefix, text, width)
    assert crc.dtype == np.uint32
    assert crc.tolist() == _reference(prefix, text, width)


def test_code_points_keep_lone_surrogates_and_astral_characters():
    assert code_points("a\ud800\U0001f600").tolist() == [0x61, 0xD800, 0x1F600]
    assert code_points("plain").tolist() == [ord(c) for c in "plain"]


def test_windows_touching_a_marked_position():
    marked = np.array([False, False, True, False, False, False])
    assert windows_touching(marked, 2).tolist() == [False, True, True, False, False]
    assert windows_touching(marked, 6).tolist() == [True]
    assert windows_touching(marked, 7).tolist() == []

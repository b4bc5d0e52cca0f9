"""The chunked DATA reader against the line-by-line one it replaced, on random messages cut anywhere.

The reference below is the SMTP door's former DATA loop (``StreamReader.readuntil(b"\\r\\n")`` line by
line, ``LimitOverrunError`` for a line past the limit), kept here as the specification, with the one
fix the security review asked for (finding 11): after an overrun it remembers it is in the middle of a
line, so the rest of that line is never read as a line of its own (the old loop took a ``.`` cut off
the end of a long line for the terminator). Its size now counts as RFC 1870 does (no transparency
dots), like the new reader. Both must give the same outcome, message bytes and following bytes
whatever the TCP segments and read sizes.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailbridge.ingress.dataread import LINE_LIMIT, DataOutcome, DataReader

Result = tuple[DataOutcome | None, bytes | None, bytes]  # outcome (None: no terminator), message, rest


async def _reference(reader: asyncio.StreamReader, size_limit: int, line_limit: int) -> Result:
    size = 0
    too_long = bare = too_big = False
    mid_line = False  # the fix: inside a line whose start overran the limit
    out = bytearray()
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            return None, None, b""
        except asyncio.LimitOverrunError as exc:
            too_long = True
            fragment = await reader.read(exc.consumed)
            size += len(fragment) - (1 if not mid_line and fragment.startswith(b".") else 0)
            bare = bare or b"\r" in fragment or b"\n" in fragment
            mid_line = True
            continue
        if mid_line:  # the end of a too-long line: never a line of its own, never the terminator
            mid_line = False
            size += len(line)
            bare = bare or b"\r" in line[:-2] or b"\n" in line[:-2]
            too_big = too_big or size > size_limit
            continue
        if line == b".\r\n":
            break
        content = line[1:] if line.startswith(b".") else line
        size += len(content)
        if size > size_limit:
            too_big = True
        if b"\n" in line[:-2] or b"\r" in line[:-2]:
            bare = True
        if len(line) > line_limit:
            too_long = True
        if not (too_big or too_long or bare):
            out += content
    too_big = too_big or size > size_limit
    if too_long:
        outcome = DataOutcome.too_long
    elif bare:
        outcome = DataOutcome.bare_line_ending
    elif too_big:
        outcome = DataOutcome.too_big
    else:
        outcome = DataOutcome.ok
    return outcome, bytes(out) if outcome is DataOutcome.ok else None, b""


def reference(segments: list[bytes], size_limit: int, line_limit: int) -> Result:
    """Run the line-by-line reader on a real StreamReader, the segments arriving one by one."""

    async def main() -> Result:
        reader = asyncio.StreamReader(limit=line_limit)

        async def arrive() -> None:
            for segment in segments:
                reader.feed_data(segment)
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.create_task(arrive())
        outcome, message, _ = await _reference(reader, size_limit, line_limit)
        await feeder
        rest = bytes(reader._buffer)  # what the command loop would read next
        return outcome, message, rest if outcome is not None else b""

    return asyncio.run(main())


def chunked(segments: list[bytes], size_limit: int, line_limit: int) -> Result:
    reader = DataReader(size_limit, line_limit)
    out = bytearray()
    for n, segment in enumerate(segments):
        out += reader.feed(segment)
        if reader.done:
            rest = reader.rest + b"".join(segments[n + 1 :])
            ok = reader.outcome is DataOutcome.ok
            return reader.outcome, bytes(out) if ok else None, rest
    return None, None, b""


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


# Lines built from the pieces that matter at an edge: dots, CR, LF, CRLF, and runs around the limit.
_PIECES = st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"ab.", b" ", b"\r\n.", b".\r"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, int, int]:
    line_limit = draw(st.sampled_from([3, 5, 8, 16, LINE_LIMIT]))
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 9))
        if kind == 0:  # a run near the limit: just fits, just does not, or far over
            body = b"x" * draw(
                st.sampled_from([line_limit - 3, line_limit - 2, line_limit - 1, 3 * line_limit])
            )
            line = draw(st.sampled_from([b"", b"."])) + body + b"\r\n"
        else:
            line = b"".join(draw(st.lists(_PIECES, max_size=8))) + b"\r\n"
        lines.append(line)
    data = b"".join(lines)
    ending = draw(
        st.sampled_from(
            [b".\r\n", b".\r\nQUIT\r\n", b".\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n", b"", b".\r"]
        )
    )
    size_limit = draw(st.integers(0, len(data) + 5))
    return data + ending, size_limit, line_limit


_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=_HEALTH)
@given(streams(), st.lists(st.integers(0, 10_000), max_size=12))
@example((b"x" * 1500 + b".\r\nRSET\r\n.\r\n", 10**6, LINE_LIMIT), [1501])  # finding 11: cut after the dot
@example((b"a" * 1500 + b".\r\n.\r\n", 10**6, LINE_LIMIT), [1500, 1501, 1502])
def test_chunked_reader_matches_the_line_by_line_reader(
    stream: tuple[bytes, int, int], cuts: list[int]
) -> None:
    data, size_limit, line_limit = stream
    segments = _cut(data, cuts)
    assert chunked(segments, size_limit, line_limit) == reference(segments, size_limit, line_limit)


@settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=_HEALTH)
@given(streams(), st.integers(1, 64))
def test_chunked_reader_is_the_same_whatever_the_read_size(stream: tuple[bytes, int, int], size: int) -> None:
    data, size_limit, line_limit = stream
    whole = chunked([data], size_limit, line_limit)
    assert chunked([data[i : i + size] for i in range(0, len(data), size)], size_limit, line_limit) == whole


def test_a_dot_ending_a_long_line_is_not_the_end_of_data() -> None:
    """Finding 11 on the reader alone: the '.' closes a 1,500-octet line, it does not start one."""
    reader = DataReader(10**6)
    assert reader.feed(b"Subject: x\r\n\r\n" + b"a" * 1500 + b".") == b"Subject: x\r\n\r\n"
    reader.feed(b"\r\nMAIL FROM:<evil@example.com>\r\n")
    assert not reader.done
    reader.feed(b".\r\nQUIT\r\n")
    assert (reader.done, reader.outcome, reader.rest) == (True, DataOutcome.too_long, b"QUIT\r\n")


def test_size_counts_octets_without_transparency_dots() -> None:
    """RFC 1870 §4: the size of a message is without the doubled dots and the terminator."""
    reader = DataReader(6)
    out = reader.feed(b"..a\r\n.b\r\n.\r\n")
    assert (out, reader.size, reader.outcome) == (b"", 7, DataOutcome.too_big)  # refused: nothing kept
    reader = DataReader(7)
    assert reader.feed(b"..a\r\n.b\r\n.\r\n") == b".a\r\nb\r\n" and reader.outcome is DataOutcome.ok


@pytest.mark.parametrize("line_limit", [0, 2])
def test_line_limit_must_leave_room_for_the_terminator(line_limit: int) -> None:
    with pytest.raises(ValueError):
        DataReader(10, line_limit)

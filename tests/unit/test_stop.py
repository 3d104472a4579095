"""The stop buffer and the UTF-8 byte stream: the per-token text path of every backend."""

from __future__ import annotations

import random

import pytest

from langchain_localllm._core.stop import ByteStream, StopBuffer, merge_stops


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], StopBuffer]:
    buf = StopBuffer(stops)
    out = [buf.push(p) for p in pieces]
    out.append(buf.flush())
    return out, buf


def test_no_stops_passes_text_through_unchanged() -> None:
    out, buf = run([], ["Hel", "lo", " world"])
    assert out == ["Hel", "lo", " world", ""]
    assert not buf.stopped


def test_single_token_stop_is_cut_and_never_emitted() -> None:
    out, buf = run(["."], ["Roses", " are", " red", ".", " Violets"])
    assert "".join(out) == "Roses are red"
    assert buf.stopped
    assert buf.matched == "."


def test_multi_token_stop_holds_back_only_the_possible_prefix() -> None:
    buf = StopBuffer(["\nUser:"])
    assert buf.push("Hello") == "Hello"
    assert buf.push("\nUs") == ""  # could become the stop string: held
    assert buf.pending == "\nUs"
    assert buf.push("er: hi") == ""
    assert buf.stopped


def test_held_text_is_released_when_it_stops_matching() -> None:
    buf = StopBuffer(["\nUser:"])
    assert buf.push("a\nU") == "a"
    assert buf.push("nder") == "\nUnder"
    assert not buf.stopped


def test_stop_starting_mid_token() -> None:
    out, buf = run(["ow"], ["A fl", "ower", " shop"])
    assert "".join(out) == "A fl"
    assert buf.stopped


def test_earliest_of_several_stops_wins() -> None:
    out, buf = run(["red", "are"], ["Roses are red."])
    assert "".join(out) == "Roses "
    assert buf.matched == "are"


def test_chinese_stop_string() -> None:
    out, _ = run(["枯了"], ["两天花", "就枯", "了，怎么办"])
    assert "".join(out) == "两天花就"


def test_nothing_is_emitted_after_a_stop() -> None:
    buf = StopBuffer(["x"])
    buf.push("ax")
    assert buf.push("more") == ""
    assert buf.flush() == ""


def test_flush_returns_a_held_prefix_that_never_completed() -> None:
    out, buf = run(["STOP"], ["the end ST"])
    assert out == ["the end ", "ST"]
    assert not buf.stopped


@pytest.mark.parametrize("seed", range(20))
def test_any_split_gives_the_same_text_as_one_piece(seed: int) -> None:
    rng = random.Random(seed)
    text = "Roses are red.\nViolets are blue, 玫瑰是红的🌹 and so on.\nUser: next"
    stops = rng.sample(["\nUser:", "blue", "玫瑰", "🌹 and", "zzz", "."], k=2)
    cuts = sorted(rng.sample(range(1, len(text)), k=8))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    whole, _ = run(stops, [text])
    split, _ = run(stops, pieces)
    assert "".join(split) == "".join(whole)
    first = min((text.find(s) for s in stops if s in text), default=len(text))
    assert "".join(split) == text[:first]


def test_merge_stops_keeps_order_and_drops_duplicates_and_empties() -> None:
    assert merge_stops(["a", "b"], None, ["b", "", "c"]) == ["a", "b", "c"]


def test_merge_stops_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        merge_stops("stop")  # type: ignore[arg-type]


def test_byte_stream_never_emits_half_a_character() -> None:
    data = "玫瑰🌹".encode()
    stream = ByteStream([])
    out = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert "\ufffd" not in "".join(out)
    assert "".join(out) == "玫瑰🌹"
    # every emitted piece is whole characters
    assert [p for p in out if p] == ["玫", "瑰", "🌹"]


def test_byte_stream_drops_a_character_cut_off_at_the_end() -> None:
    stream = ByteStream([])
    assert stream.push(b"ok" + "玫".encode()[:2]) == "ok"
    assert stream.finish() == ""


def test_byte_stream_cuts_stops_across_byte_boundaries() -> None:
    stream = ByteStream(["瑰"])
    data = "玫瑰花".encode()
    out = "".join(stream.push(data[i : i + 2]) for i in range(0, len(data), 2)) + stream.finish()
    assert out == "玫"
    assert stream.stops.stopped

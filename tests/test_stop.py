"""Stop strings are honoured across token boundaries and never leak a partial match."""

from __future__ import annotations

import pytest

from tritlm.stop import StopMatcher


def run(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, hit = m.push(p)
        out.append(text)
        if hit:
            return out, True
    out.append(m.flush())
    return out, False


def test_stop_split_across_pieces_is_cut_and_never_shown() -> None:
    out, hit = run(["Hello wo", "rld\n\nUs", "er: hi"], ["\n\nUser:"])
    assert hit and "".join(out) == "Hello world"
    assert all("\n" not in piece for piece in out)


def test_partial_match_is_released_when_it_fails() -> None:
    out, hit = run(["a<", "|e", "nd", "x"], ["<|end|>"])
    assert not hit and "".join(out) == "a<|endx"
    assert out[0] == "a"  # "<" held back until it cannot start the stop string


def test_earliest_of_several_stops_wins() -> None:
    out, hit = run(["one two three"], ["three", "two"])
    assert hit and "".join(out) == "one "


@pytest.mark.parametrize("stops", [[], [""]])
def test_no_stops_passes_everything(stops: list[str]) -> None:
    out, hit = run(["a", "b"], stops)
    assert not hit and out == ["a", "b", ""]

"""safe_filename and unique_name: an attachment's name is data, never a path."""

from __future__ import annotations

import os
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popflow.safenames import MAX_NAME_BYTES, safe_filename, unique_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("C:\\evil", "evil"),
        ("C:evil.exe", "C_evil.exe"),
        ('a<b>c:d"e|f?g*h.txt', "a_b_c_d_e_f_g_h.txt"),
        ("dir/", "dir"),
        ("a/..", "a"),
        ("  .hidden. ", "hidden"),
        ("name.txt...", "name.txt"),
        ("a\x00b\x01c\x7f.txt", "abc.txt"),
        ("line\r\n folded.txt", "line folded.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # right-to-left override disguising an .exe
        ("zero\u200bwidth.txt", "zerowidth.txt"),
        ("résumé.pdf", "résumé.pdf"),
        ("写真.jpg", "写真.jpg"),
    ],
)
def test_sanitises(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("Lpt1", "_Lpt1"),
        ("nul.tar.gz", "_nul.tar.gz"),
        ("com9.log", "_com9.log"),
        ("AUX ", "_AUX"),
        ("COM¹", "_COM¹"),
        ("console.txt", "console.txt"),
        ("com10", "com10"),
        ("lpt", "lpt"),
    ],
)
def test_windows_reserved_names_are_prefixed(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


@pytest.mark.parametrize("name", [None, "", ".", "..", "...", " ", "/", "\\", "../..", "\x00\x01", "\u202e"])
def test_empty_results_use_fallback(name: str | None) -> None:
    assert safe_filename(name) == "attachment"
    assert safe_filename(name, fallback="part-2.bin") == "part-2.bin"


def test_fallback_is_made_safe_too() -> None:
    assert safe_filename("..", fallback="../x") == "x"
    assert safe_filename("", fallback="..") == "attachment"


def test_long_name_keeps_extension() -> None:
    result = safe_filename("x" * 5000 + ".pdf")
    assert result.endswith(".pdf")
    assert len(result.encode()) == MAX_NAME_BYTES


def test_long_multibyte_name_is_cut_on_a_character_boundary() -> None:
    result = safe_filename("日本" * 2000 + ".txt")
    assert result.endswith(".txt")
    assert len(result.encode()) <= MAX_NAME_BYTES
    result.encode("utf-8")  # no broken sequence


def test_long_extension_counts_as_name() -> None:
    result = safe_filename("a." + "b" * 5000)
    assert len(result.encode()) <= MAX_NAME_BYTES
    assert result.startswith("a.b")


def test_nfc_normalised() -> None:
    decomposed = "re\u0301sume\u0301.pdf"
    assert safe_filename(decomposed) == unicodedata.normalize("NFC", decomposed)


def test_encoded_looking_name_is_only_sanitised() -> None:
    result = safe_filename("=?utf-8?B?Li4vLi4vZXZpbC5leGU=?=")
    assert result == "=_utf-8_B_Li4vLi4vZXZpbC5leGU=_="
    assert safe_filename("utf-8''..%2F..%2Fevil.exe") == "utf-8''..%2F..%2Fevil.exe"


def test_unique_name_is_case_insensitive_and_records_choice() -> None:
    taken: set[str] = set()
    assert unique_name("a.pdf", taken) == "a.pdf"
    assert unique_name("A.PDF", taken) == "A (2).PDF"
    assert unique_name("a.pdf", taken) == "a (3).pdf"
    assert unique_name("b", taken) == "b"
    assert unique_name("b", taken) == "b (2)"
    assert taken == {"a.pdf", "A (2).PDF", "a (3).pdf", "b", "b (2)"}


def test_unique_name_stays_within_length() -> None:
    name = safe_filename("y" * 5000 + ".txt")
    taken = {name}
    second = unique_name(name, taken)
    assert second != name
    assert second.endswith(" (2).txt")
    assert len(second.encode()) <= MAX_NAME_BYTES


@given(st.text())
def test_any_text_gives_one_component_inside_base(text: str) -> None:
    base = os.path.abspath("/srv/mail/att")
    name = safe_filename(text)
    assert name
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..")
    assert len(name.encode("utf-8")) <= 255
    joined = os.path.normpath(os.path.join(base, name))
    assert os.path.dirname(joined) == base


@given(st.text(alphabet=st.characters(), min_size=1), st.sets(st.text(max_size=8), max_size=5))
def test_unique_name_never_collides(text: str, taken: set[str]) -> None:
    name = safe_filename(text)
    before = {item.casefold() for item in taken}
    chosen = unique_name(name, taken)
    assert chosen.casefold() not in before
    assert chosen in taken

"""The paper's notation: parsing, canonical printing, clear errors."""

import pytest

from metaqnn import architecture as A

PAPER = [
    "[C(128,3,1), P(2,2), C(64,5,1), C(512,5,1), C(256,3,1), C(512,3,1), P(2,2), "
    "C(512,3,1), C(256,5,1), C(256,3,1), C(128,5,1), C(64,3,1), SM(10)]",
    "[C(128,3,1), C(512,3,1), P(2,2), C(256,3,1), C(128,5,1), C(64,1,1), C(64,5,1), "
    "C(512,5,1), GAP(10), SM(10)]",
    "[C(64,1,1), C(256,3,1), P(2,2), C(512,3,1), C(256,1,1), P(5,3), C(256,3,1), "
    "C(512,3,1), FC(512), SM(10)]",
    "[SM(10)]",
    "[GAP(100), SM(100)]",
]


@pytest.mark.parametrize("text", PAPER)
def test_round_trip(text):
  assert str(A.parse(text)) == text


def test_canonical_form_from_loose_spacing():
  arch = A.parse("  [ C( 128 ,3,1) ,P(2,2),FC(512),  SM(10) ] ")
  assert str(arch) == "[C(128,3,1), P(2,2), FC(512), SM(10)]"
  assert arch.layers == (A.Conv(128, 3, 1), A.Pool(2, 2), A.FC(512), A.Softmax(10))
  assert arch.num_classes == 10
  assert arch.hidden == (A.Conv(128, 3, 1), A.Pool(2, 2), A.FC(512))


def test_terminal():
  assert A.parse("[C(64,3,1), GAP(10), SM(10)]").terminal == A.GAP(10)
  assert A.parse("[C(64,3,1), SM(10)]").terminal == A.Softmax(10)


@pytest.mark.parametrize("text, position, expected", [
    ("C(128,3,1), SM(10)]", 0, "'['"),
    ("[C(128,3), SM(10)]", 8, "','"),
    ("[C(128,3,1) SM(10)]", 12, "',' or ']'"),
    ("[X(1), SM(10)]", 1, "a layer"),
    ("[C(128,a,1), SM(10)]", 7, "an integer"),
    ("[C(128,3,1), SM(10)", 19, "',' or ']'"),
    ("[C(128,3,1), SM(10)] x", 21, "end of input"),
    ("[FC(512,2), SM(10)]", 7, "')'"),
    ("", 0, "'['"),
    ("[C(\u0663,3,1), SM(10)]", 3, "an integer"),  # an Arabic-Indic 3: not read as 3
    ("[C(\uff14,3,1), SM(10)]", 3, "an integer"),  # a full-width 4
])
def test_malformed_names_position_and_expectation(text, position, expected):
  with pytest.raises(A.ArchitectureError) as e:
    A.parse(text)
  assert f"position {position}" in str(e.value)
  assert expected in str(e.value)


@pytest.mark.parametrize("text, fragment", [
    ("[C(128,3,1)]", "must end with SM"),
    ("[SM(10), C(64,3,1), SM(10)]", "SM must be the last"),
    ("[GAP(10), C(64,3,1), SM(10)]", "GAP must come right before SM"),
    ("[C(64,3,1), GAP(5), SM(10)]", "same number of classes"),
    ("[FC(128), GAP(10), SM(10)]", "GAP cannot follow an FC"),
    ("[FC(128), C(64,3,1), SM(10)]", "cannot follow FC"),
    ("[C(0,3,1), SM(10)]", "positive integer"),
])
def test_structurally_invalid(text, fragment):
  with pytest.raises(A.ArchitectureError, match=fragment):
    A.parse(text)


def test_layers_are_hashable_values():
  assert A.parse("[C(64,3,1), SM(10)]") == A.parse("[C(64, 3, 1), SM(10)]")
  assert len({A.parse("[C(64,3,1), SM(10)]"), A.parse("[C(64,3,1),SM(10)]")}) == 1

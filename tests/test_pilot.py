"""The protocol's pilot rule: fewest rounds whose last 25% add less than 1 point, at the curve's top."""

from __future__ import annotations

import pytest

from fedpilot.report.pilot import accuracy_at, enough_rounds


def test_a_rising_curve_needs_the_round_where_it_flattens():
    rounds = list(range(1, 13))
    accuracy = [0.10, 0.20, 0.30, 0.40, 0.50, 0.55, 0.58, 0.595, 0.60, 0.602, 0.603, 0.603]
    # R=8: acc(8)=0.595 < best-0.01=0.593? no, 0.595 >= 0.593; acc(8)-acc(6)=0.045 -> no.
    # R=9: acc(9)-acc(floor(6.75)=6)=0.05 -> no. R=10: 0.602-acc(7)=0.022 -> no.
    # R=11: 0.603-acc(8)=0.008 < 0.01 -> yes.
    assert enough_rounds((rounds, accuracy)) == 11


def test_a_curve_flat_at_chance_before_it_rises_does_not_stop_early():
    rounds = list(range(1, 13))
    accuracy = [0.05, 0.05, 0.05, 0.05, 0.2, 0.4, 0.45, 0.455, 0.458, 0.462, 0.46, 0.461]
    # rounds 2-4 add nothing over their first 75%, but end far below the best (0.462)
    # R=10: 0.462-acc(7)=0.012 -> no; R=11: 0.46-acc(8)=0.005, and 0.46 >= 0.452 -> yes.
    assert enough_rounds((rounds, accuracy)) == 11


def test_a_curve_still_rising_at_its_end_has_no_answer():
    assert enough_rounds(([2, 4, 6, 8], [0.1, 0.2, 0.3, 0.4])) is None


def test_sparse_evaluation_reads_the_last_evaluated_round():
    assert accuracy_at(([5, 10, 15], [0.3, 0.5, 0.6]), 14) == 0.5
    assert accuracy_at(([5, 10, 15], [0.3, 0.5, 0.6]), 2) == 0.3


def test_an_empty_curve_is_an_error():
    with pytest.raises(ValueError, match="no evaluated rounds"):
        enough_rounds(([], []))

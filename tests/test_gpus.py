"""GPU names as people type them: case, separators, sizes, ambiguity."""

import pytest

from fedpilot.memory.cost import BudgetError, check_budget, parse_budget
from fedpilot.memory.gpus import GPUS, MiB, UnknownGpu, find_gpu, usable_gpu_bytes


@pytest.mark.parametrize(("text", "name"), [
    ("T4", "t4-16g"), ("A100-80GB", "a100-80g"), ("a100 80g", "a100-80g"), ("A100_80GiB", "a100-80g"),
    ("RTX 4090", "rtx4090-24g"), ("rtx3060", "rtx3060-12g"), ("rtx3060-laptop-6g", "rtx3060-laptop-6g"),
    ("RTX 3060 Laptop", "rtx3060-laptop-6g"), ("NVIDIA GeForce RTX 4060", "rtx4060-8g"), ("h100", "h100-80g"),
])
def test_gpu_names_match_the_spellings_people_type(text, name):
    assert find_gpu(text) == name
    assert parse_budget(text) == usable_gpu_bytes(name)


def test_an_ambiguous_name_lists_its_matches():
    with pytest.raises(UnknownGpu, match="'A100' is ambiguous: a100-40g, a100-80g"):
        find_gpu("A100")
    with pytest.raises(BudgetError, match="ambiguous"):
        parse_budget("a100")


def test_six_and_eight_gigabyte_cards_are_known():
    small = {name for name, total in GPUS.items() if total <= 8192 * MiB}
    assert {"rtx3060-laptop-6g", "rtx4060-8g", "rtx4060-laptop-8g", "rtx3070-8g"} <= small


def test_an_unknown_name_suggests_near_ones():
    with pytest.raises(UnknownGpu, match="did you mean rtx4090-24g"):
        find_gpu("rtx4099")


def test_check_budget_accepts_percentages_without_a_profile():
    check_budget("40%")
    check_budget("rtx4090")
    with pytest.raises(BudgetError, match="percentage"):
        check_budget("abc%")
    with pytest.raises(BudgetError, match="unknown GPU"):
        check_budget("quadro-k1")

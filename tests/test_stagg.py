"""Hand-computed checks of FedAvg and STAgg with DWA (fedpilot.aggregate)."""

import pytest
import torch
from torch.testing import assert_close

from fedpilot.aggregate.fedavg import weighted_average
from fedpilot.aggregate.stagg import UnitHistory, dwa_weights, spatial_delta, stagg_round, unit_norm


def t(*values: float) -> torch.Tensor:
    """A float32 vector literal."""
    return torch.tensor(values, dtype=torch.float32)


# --- FedAvg -----------------------------------------------------------------------------------------


def test_weighted_average_key_missing_from_one_state() -> None:
    states = [{"a": t(1.0, 1.0), "b": t(2.0)}, {"a": t(3.0, 5.0)}]
    out = weighted_average(states, [1.0, 3.0])
    # a = (1*[1, 1] + 3*[3, 5]) / 4 = [10/4, 16/4] = [2.5, 4.0]
    assert_close(out["a"], t(2.5, 4.0))
    # b only in state 0: (1*[2]) / 1 = [2.0], not 1*[2] / 4 = [0.5]
    assert_close(out["b"], t(2.0))


def test_weighted_average_keeps_low_precision_dtype() -> None:
    states = [{"w": torch.ones(2, dtype=torch.bfloat16)}, {"w": torch.full((2,), 3.0, dtype=torch.bfloat16)}]
    out = weighted_average(states, [1.0, 1.0])
    # (1 + 3) / 2 = 2, exactly representable in bfloat16
    assert out["w"].dtype == torch.bfloat16
    assert_close(out["w"], torch.full((2,), 2.0, dtype=torch.bfloat16))


@pytest.mark.parametrize("weights", [[1.0], [1.0, 0.0], [1.0, -2.0], [1.0, float("nan")]])
def test_weighted_average_rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="weight"):
        weighted_average([{"a": t(1.0)}, {"a": t(2.0)}], weights)


def test_weighted_average_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        weighted_average([{"a": t(1.0)}, {"a": t(1.0, 2.0)}], [1.0, 1.0])


# --- spatial ----------------------------------------------------------------------------------------


def test_spatial_delta_weights_covering_clients_unequally() -> None:
    global_unit = {"A": t(1.0, 2.0), "B": t(7.0)}
    clients = [{"A": t(3.0, 2.0)}, {"A": t(1.0, 6.0)}]
    delta, client_norm = spatial_delta(global_unit, clients, [1.0, 3.0])
    # offsets [2, 0] (n=1) and [0, 4] (n=3): D = (1*[2, 0] + 3*[0, 4]) / 4 = [0.5, 3.0]
    assert_close(delta["A"], t(0.5, 3.0))
    # N = (1 * ||[2, 0]|| + 3 * ||[0, 4]||) / 4 = (2 + 12) / 4 = 3.5
    assert client_norm == pytest.approx(3.5)
    # nobody sent B: zero delta
    assert_close(delta["B"], t(0.0))


def test_round_ignores_clients_that_did_not_train_the_unit() -> None:
    global_units = {0: {"A": t(1.0, 2.0)}, 1: {"A": t(0.0)}}
    updates = [({0: {"A": t(3.0, 2.0)}}, 1.0), ({0: {"A": t(1.0, 6.0)}}, 3.0), ({1: {"A": t(1.0)}}, 4.0)]
    units, _, metrics = stagg_round(global_units, updates, 3, {}, temporal=False)
    # D_0 = [0.5, 3.0] over C_0 = {c1, c2}; FedAvg over all 8 data units would give [0.25, 1.5]
    assert_close(units[0]["A"], t(1.5, 5.0))
    assert metrics[0].coverage == 2
    # |D_0| = sqrt(0.25 + 9) = sqrt(9.25) = 3.0413812651...
    assert metrics[0].delta_norm == pytest.approx(3.0413812651)


# --- temporal ---------------------------------------------------------------------------------------


def test_momentum_over_two_rounds() -> None:
    # one of two sampled clients trains the only unit: alpha = 1/2, eta = 1 (K = 1), mu = 0.5
    units = {0: {"A": t(0.0)}}
    units, history, _ = stagg_round(units, [({0: {"A": t(2.0)}}, 1.0)], 2, {}, mu=0.5)
    # D1 = 2, H1 = 0.5*0 + 0.5*2 = 1, Hhat = 1 / (1 - 0.5) = 2, W = 0 + (0.5*2 + 0.5*2) = 2
    assert_close(history[0].momentum["A"], t(1.0))
    assert history[0].updates == 1
    assert_close(units[0]["A"], t(2.0))
    units, history, metrics = stagg_round(units, [({0: {"A": t(6.0)}}, 1.0)], 2, history, mu=0.5)
    # D2 = 6 - 2 = 4, H2 = 0.5*1 + 0.5*4 = 2.5, Hhat = 2.5 / (1 - 0.25) = 10/3, W = 2 + (0.5*4 + 0.5*10/3) = 17/3
    assert_close(history[0].momentum["A"], t(2.5))
    assert_close(units[0]["A"], t(17 / 3))
    assert history[0].last_norm == pytest.approx(4.0)
    assert (history[0].age, history[0].updates) == (0, 2)
    # r = 4 / 2 = 2, but a single trained unit always gets eta = 1 * e^(r/T) / e^(r/T) = 1
    assert metrics[0].eta == pytest.approx(1.0)


def test_sum_momentum_over_two_rounds() -> None:
    # the literal H <- mu*H + D ablation, same rounds as above
    units = {0: {"A": t(0.0)}}
    units, history, _ = stagg_round(units, [({0: {"A": t(2.0)}}, 1.0)], 2, {}, mu=0.5, momentum="sum")
    # D1 = 2, H1 = 0.5*0 + 2 = 2, W = 0 + (0.5*2 + 0.5*2) = 2
    assert_close(history[0].momentum["A"], t(2.0))
    assert_close(units[0]["A"], t(2.0))
    units, history, _ = stagg_round(units, [({0: {"A": t(6.0)}}, 1.0)], 2, history, mu=0.5, momentum="sum")
    # D2 = 6 - 2 = 4, H2 = 0.5*2 + 4 = 5, W = 2 + (0.5*4 + 0.5*5) = 6.5
    assert_close(history[0].momentum["A"], t(5.0))
    assert_close(units[0]["A"], t(6.5))


@pytest.mark.parametrize(("momentum", "last_step"), [("ema", 1.0), ("sum", 0.1 + 0.9 * (1 - 0.9**20) / 0.1)])
def test_a_low_coverage_unit_with_steady_updates_steps_by_one_update_only_with_ema(momentum, last_step) -> None:
    # 1 of 10 sampled clients moves the unit by +1 every round: alpha = 0.1, mu = 0.9, 20 rounds
    units, history = {0: {"A": t(0.0)}}, {}
    for _ in range(20):
        before = float(units[0]["A"])
        units, history, _ = stagg_round(units, [({0: {"A": t(before + 1.0)}}, 1.0)], 10, history, mu=0.9,
                                        momentum=momentum)
    assert float(units[0]["A"]) - before == pytest.approx(last_step, rel=1e-5)


def test_alpha_is_coverage_over_sampled() -> None:
    global_units = {0: {"A": t(0.0)}, 1: {"A": t(0.0)}}
    updates = [
        ({0: {"A": t(1.0)}, 1: {"A": t(1.0)}}, 1.0),
        ({0: {"A": t(1.0)}}, 1.0),
        ({0: {"A": t(1.0)}}, 1.0),
    ]
    _, _, metrics = stagg_round(global_units, updates, 4, {})
    # 4 clients sampled: c_0 = 3 -> 3/4, c_1 = 1 -> 1/4
    assert (metrics[0].coverage, metrics[1].coverage) == (3, 1)
    assert metrics[0].alpha == pytest.approx(0.75)
    assert metrics[1].alpha == pytest.approx(0.25)


@pytest.mark.parametrize(("bias", "expected"), [("exact", 1.0), ("rounds", None)])
def test_bias_correction_is_exact_after_idle_rounds(bias: str, expected: float | None) -> None:
    # 1 of 5 eligible clients moves the unit by +1 for 10 rounds, 5 idle rounds, then one more +1
    # (alpha = 0.2, mu = 0.9, a single unit so eta = 1): every past update was 1, so the step is 1
    units, history = {0: {"A": t(0.0)}}, {}
    for _ in range(10):
        before = float(units[0]["A"])
        units, history, _ = stagg_round(units, [({0: {"A": t(before + 1.0)}}, 1.0)], 5, history, bias=bias)
    for _ in range(5):
        units, history, _ = stagg_round(units, [], 5, history, bias=bias)
    before = float(units[0]["A"])
    units, history, _ = stagg_round(units, [({0: {"A": t(before + 1.0)}}, 1.0)], 5, history, bias=bias)
    step = float(units[0]["A"]) - before
    if expected is not None:
        assert step == pytest.approx(expected, rel=1e-6)
    else:  # the k-rounds correction ignores the idle decay: H / (1 - 0.9^11) with H decayed by 0.9^5
        assert step < 0.9


def test_alpha_counts_only_clients_that_could_afford_the_unit() -> None:
    global_units = {0: {"A": t(0.0)}, 1: {"A": t(0.0)}}
    updates = [({0: {"A": t(1.0)}, 1: {"A": t(1.0)}}, 1.0), ({1: {"A": t(1.0)}}, 1.0)]
    # 5 sampled, but only 1 could afford unit 0 (the strong one) and all 5 unit 1
    _, _, metrics = stagg_round(global_units, updates, {0: 1, 1: 5}, {})
    assert metrics[0].alpha == pytest.approx(1.0) and metrics[1].alpha == pytest.approx(0.4)


@pytest.mark.parametrize(("ratio", "boosted"), [("mean", True), ("client", False)])
def test_dwa_rate_of_a_one_client_round_is_not_boosted_by_averaging_fewer_clients(ratio: str, boosted: bool) -> None:
    # round 1: unit 0 averaged over 4 clients whose offsets (0.5, +-1.5) cancel in pairs (||D|| = 0.5, each
    # ||offset|| = 1.58), unit 1 over 4 clients that agree (||D|| = each = 1). Round 2: each unit trained by one
    # client with an offset of the same norm as before (1.58 and 1).
    units = {0: {"A": t(0.0, 0.0)}, 1: {"A": t(0.0, 0.0)}}
    first = [({0: {"A": t(0.5, 1.5 * sign)}, 1: {"A": t(1.0, 0.0)}}, 1.0) for sign in (1, -1, 1, -1)]
    units, history, _ = stagg_round(units, first, 4, {}, dwa_ratio=ratio, mu=0.0)
    second = [({0: {"A": units[0]["A"] + t(0.5, 1.5)}, 1: {"A": units[1]["A"] + t(1.0, 0.0)}}, 1.0)]
    _, _, metrics = stagg_round(units, second, 4, history, dwa_ratio=ratio, mu=0.0)
    if boosted:  # ||D|| went 0.5 -> 1.58 (r = 3.16) against 1 -> 1 (r = 1): unit 0 boosted, unit 1 shrunk
        assert metrics[0].eta > 1.2 and metrics[1].eta < 0.8
    else:  # the clients' own update norms did not change: r = 1 for both
        assert metrics[0].eta == pytest.approx(1.0) and metrics[1].eta == pytest.approx(1.0)


def test_untrained_unit_is_unchanged_and_its_momentum_decays() -> None:
    global_units = {0: {"A": t(0.0)}, 1: {"A": t(5.0, 5.0)}, 2: {"A": t(9.0)}}
    history = {1: UnitHistory({"A": t(4.0, -2.0)}, age=2, last_norm=3.0)}
    units, new_history, metrics = stagg_round(global_units, [({0: {"A": t(1.0)}}, 1.0)], 1, history, mu=0.5)
    assert_close(units[1]["A"], t(5.0, 5.0))
    # H = 0.5 * [4, -2] = [2, -1]; age 2 -> 3; last norm kept
    assert_close(new_history[1].momentum["A"], t(2.0, -1.0))
    assert (new_history[1].age, new_history[1].last_norm) == (3, 3.0)
    assert (metrics[1].coverage, metrics[1].age) == (0, 3)
    # unit 2, idle with no history: zero momentum, age 0 -> 1, no norm record
    assert_close(units[2]["A"], t(9.0))
    assert_close(new_history[2].momentum["A"], t(0.0))
    assert (new_history[2].age, new_history[2].last_norm) == (1, None)
    # inputs untouched
    assert_close(history[1].momentum["A"], t(4.0, -2.0))
    assert history[1].age == 2
    assert_close(global_units[0]["A"], t(0.0))


# --- DWA --------------------------------------------------------------------------------------------


def test_dwa_two_units_given_ratios() -> None:
    etas = dwa_weights({0: 2.0, 1: 2.0}, {0: 1.0, 1: 2.0}, temperature=2.0)
    # r_0 = 2/1 = 2, r_1 = 2/2 = 1; eta_0 = 2 e^1 / (e^1 + e^0.5) = 2 / (1 + e^-0.5)
    #   e^-0.5 = 0.6065306597 -> eta_0 = 2 / 1.6065306597 = 1.2449186624, eta_1 = 2 - eta_0 = 0.7550813376
    assert etas[0] == pytest.approx(1.2449186624)
    assert etas[1] == pytest.approx(0.7550813376)
    assert (etas[0] + etas[1]) / 2 == pytest.approx(1.0)


def test_dwa_ratio_is_one_without_usable_previous_norm() -> None:
    # unit 0 has no record, unit 1 a zero norm: r = 1 for both -> equal weights of 1
    etas = dwa_weights({0: 5.0, 1: 0.3}, {0: None, 1: 0.0}, temperature=2.0)
    assert etas == pytest.approx({0: 1.0, 1: 1.0})


def two_unit_round(dwa: bool) -> dict[int, dict[str, torch.Tensor]]:
    """Both units trained by the single sampled client (alpha = 1), D = 2 each, previous norms 1 and 2."""
    global_units = {0: {"A": t(0.0)}, 1: {"A": t(0.0)}}
    history = {j: UnitHistory({"A": t(0.0)}, last_norm=norm) for j, norm in ((0, 1.0), (1, 2.0))}
    updates = [({0: {"A": t(2.0)}, 1: {"A": t(2.0)}}, 1.0)]
    units, _, _ = stagg_round(global_units, updates, 1, history, temperature=2.0, dwa=dwa)
    return units


def test_round_scales_update_by_eta() -> None:
    units = two_unit_round(dwa=True)
    # W = eta * D: 2 * 1.2449186624 = 2.4898373248 and 2 * 0.7550813376 = 1.5101626752
    assert_close(units[0]["A"], t(2.4898373248))
    assert_close(units[1]["A"], t(1.5101626752))


def test_dwa_off_uses_eta_one() -> None:
    units = two_unit_round(dwa=False)
    # W = 1 * (1 * D + 0 * H) = 2
    assert_close(units[0]["A"], t(2.0))
    assert_close(units[1]["A"], t(2.0))


# --- spatial-only ablation --------------------------------------------------------------------------


def test_spatial_only_adds_delta_and_ignores_history() -> None:
    global_units = {0: {"A": t(1.0, 2.0)}}
    history = {0: UnitHistory({"A": t(10.0, 10.0)}, age=1, last_norm=0.1)}
    updates = [({0: {"A": t(3.0, 2.0)}}, 1.0), ({0: {"A": t(1.0, 6.0)}}, 3.0)]
    units, new_history, metrics = stagg_round(global_units, updates, 5, history, temporal=False)
    # W = [1, 2] + D = [1, 2] + [0.5, 3.0] = [1.5, 5.0]; no alpha (2/5), no eta, no momentum
    assert_close(units[0]["A"], t(1.5, 5.0))
    assert_close(new_history[0].momentum["A"], t(10.0, 10.0))
    assert (metrics[0].alpha, metrics[0].eta) == (1.0, 1.0)


# --- misc -------------------------------------------------------------------------------------------


def test_unit_norm_spans_all_tensors() -> None:
    # sqrt(3^2 + 4^2 + 12^2) = sqrt(169) = 13
    assert unit_norm({"A": t(3.0, 4.0), "B": t(12.0)}) == pytest.approx(13.0)


GLOBAL = {0: {"A": t(0.0)}}
GOOD = [({0: {"A": t(1.0)}}, 1.0)]


@pytest.mark.parametrize(
    ("updates", "num_sampled", "kwargs", "message"),
    [
        (GOOD, 1, {"mu": 1.0}, "mu"),
        (GOOD, 1, {"mu": -0.1}, "mu"),
        (GOOD, 1, {"momentum": "adam"}, "momentum"),
        (GOOD, 1, {"temperature": 0.0}, "temperature"),
        (GOOD, 1, {"bias": "none"}, "bias"),
        (GOOD, 1, {"dwa_ratio": "max"}, "dwa_ratio"),
        (GOOD, 0, {}, "eligible"),
        (GOOD + GOOD, 1, {}, "eligible"),
        (GOOD, {0: 0}, {}, "eligible"),
        ([({0: {"A": t(1.0)}}, 0.0)], 1, {}, "weights"),
        ([({7: {"A": t(1.0)}}, 1.0)], 1, {}, "units not in the global model"),
        ([({0: {"Z": t(1.0)}}, 1.0)], 1, {}, "lacks"),
        ([({0: {"A": t(1.0, 2.0)}}, 1.0)], 1, {}, "shape"),
    ],
)
def test_round_rejects_bad_inputs(updates: list, num_sampled: int | dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stagg_round(GLOBAL, updates, num_sampled, {}, **kwargs)


def test_spatial_delta_and_dwa_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match="weights"):
        spatial_delta({"A": t(0.0)}, [{"A": t(1.0)}], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        spatial_delta({"A": t(0.0)}, [], [])
    with pytest.raises(ValueError, match="temperature"):
        dwa_weights({0: 1.0}, {}, temperature=-1.0)

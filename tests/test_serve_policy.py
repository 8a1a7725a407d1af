"""The batcher's decisions on synthetic service-time models with known answers."""

from __future__ import annotations

import math

import pytest

from conveyor.serve._policy import ArrivalRate, ServiceTimeModel, decide, percentile


def test_idle_a_lone_request_never_waits() -> None:
    d = decide(queued=1, oldest_age=0.0, rate=0.0, a=0.001, b=0.050, max_batch=32)
    assert (d.send, d.wait) == (1, 0.0)


def test_light_load_does_not_wait_when_too_few_would_come() -> None:
    # λ·b = 50/s · 10 ms = 0.5 < n·(1 + aλ) = 1.05: fewer than one more request per batch.
    d = decide(queued=1, oldest_age=0.0, rate=50.0, a=0.001, b=0.010, max_batch=32)
    assert d.send == 1 and "not lower latency" in d.reason


def test_a_large_fixed_cost_and_a_steady_stream_make_it_wait_the_known_best() -> None:
    # λ = 1000/s, a = 0, b = 10 ms, n = 1: gain = 10 − 1 = 9; Δ* = 9 / 2000 = 4.5 ms.
    d = decide(queued=1, oldest_age=0.0, rate=1000.0, a=0.0, b=0.010, max_batch=64)
    assert d.send == 0 and d.wait == pytest.approx(0.0045)


def test_the_wait_stops_at_a_full_batch() -> None:
    # Δ* = (1000·0.1 − 1)/2000 = 49.5 ms, but 7 more arrive in 7 ms and fill the batch of 8.
    d = decide(queued=1, oldest_age=0.0, rate=1000.0, a=0.0, b=0.100, max_batch=8)
    assert d.wait == pytest.approx(0.007)


def test_heavy_load_sends_full_batches_at_once() -> None:
    d = decide(queued=40, oldest_age=0.002, rate=5000.0, a=0.001, b=0.010, max_batch=32)
    assert (d.send, d.wait) == (32, 0.0)


def test_a_latency_target_bounds_the_wait() -> None:
    # Unbounded: Δ* = 4.5 ms. Target 12 ms, age 1 ms: 1 + Δ + (0 + 10) ≤ 12 → Δ ≤ 1 ms.
    d = decide(queued=1, oldest_age=0.001, rate=1000.0, a=0.0, b=0.010, max_batch=64, target=0.012)
    assert d.send == 0 and d.wait == pytest.approx(0.001)


def test_a_request_at_its_target_goes_at_once() -> None:
    d = decide(
        queued=3, oldest_age=0.015, rate=1000.0, a=0.001, b=0.010, max_batch=64, target=0.020
    )
    assert d.send == 3 and "target" in d.reason


def test_nothing_queued_means_nothing_to_send() -> None:
    d = decide(queued=0, oldest_age=0.0, rate=100.0, a=0.0, b=0.01, max_batch=8)
    assert d.send == 0 and math.isinf(d.wait)


def test_the_service_time_fit_recovers_a_and_b() -> None:
    model = ServiceTimeModel()
    for n in (1, 2, 4, 8, 16, 32):
        model.observe(n, 0.002 * n + 0.005)
    assert model.a == pytest.approx(0.002) and model.b == pytest.approx(0.005)
    assert model.predict(10) == pytest.approx(0.025)


def test_one_batch_size_alone_gives_no_fixed_cost_so_no_waiting() -> None:
    model = ServiceTimeModel()
    for _ in range(5):
        model.observe(1, 0.004)
    assert (model.a, model.b) == (pytest.approx(0.004), 0.0)
    d = decide(queued=1, oldest_age=0.0, rate=10_000.0, a=model.a, b=model.b, max_batch=32)
    assert d.send == 1


def test_the_fit_follows_a_model_that_changes() -> None:
    model = ServiceTimeModel(window=6)
    for n in (1, 2, 4, 8, 16, 32):
        model.observe(n, 0.002 * n + 0.005)
    for n in (1, 2, 4, 8, 16, 32):
        model.observe(n, 0.001 * n + 0.020)  # a new version, slower start, cheaper per item
    assert model.a == pytest.approx(0.001) and model.b == pytest.approx(0.020)


def test_the_arrival_rate_counts_the_horizon_and_forgets_the_past() -> None:
    rate = ArrivalRate(horizon=1.0)
    for i in range(100):
        rate.observe(i * 0.01)  # 100/s for a second
    assert rate.rate(0.99) == pytest.approx(100, rel=0.02)
    assert rate.rate(5.0) == 0.0  # quiet since: idle again


def test_percentile_by_nearest_rank() -> None:
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert math.isnan(percentile([], 0.5))


def test_a_batch_slowed_by_other_work_does_not_move_the_fit() -> None:
    model = ServiceTimeModel()
    for n in (1, 2, 4, 8):
        model.observe(n, 0.002 * n + 0.005)
    model.observe(2, 0.500)  # the machine was busy elsewhere: the fastest time counts
    assert model.a == pytest.approx(0.002) and model.b == pytest.approx(0.005)


def test_a_burst_of_arrivals_shows_at_once_in_the_rate() -> None:
    rate = ArrivalRate()
    for i in range(16):
        rate.observe(10.0 + i * 0.0005)  # 16 requests in 7.5 ms: closed-loop clients answered
    assert rate.rate(10.0075) == pytest.approx(2000, rel=0.01)


def test_after_a_burst_starts_it_waits_for_the_rest_of_the_batch() -> None:
    # λ = 3000/s, S(n) = 14 ms·n + 40 ms: gain = 120 − 43 = 77, Δ* = 12.8 ms, but the
    # 31 more a batch of 32 can take come in 31/3000 s = 10.3 ms.
    d = decide(queued=1, oldest_age=0.0, rate=3000.0, a=0.014, b=0.040, max_batch=32)
    assert d.send == 0 and d.wait == pytest.approx(31 / 3000)


def test_a_sequential_client_never_makes_it_wait_whatever_the_model() -> None:
    # One client sends its next request only after its answer: λ ≤ 1/S(1), so λ·b < 1 ≤ n.
    for a, b in ((0.0, 0.050), (0.014, 0.040), (0.001, 0.0001)):
        rate = 1.0 / (a + b)
        assert decide(queued=1, oldest_age=0.0, rate=rate, a=a, b=b, max_batch=32).send == 1


def test_a_fit_from_a_busy_warm_up_never_predicts_a_lone_request_slower_than_seen() -> None:
    model = ServiceTimeModel()
    for n in (2, 4, 8, 16, 32):
        model.observe(n, 0.184 + 0.0003 * n)  # warm-up while the machine was overloaded
    model.observe(1, 0.023)  # then a lone request, served in 23 ms
    assert model.predict(1) == pytest.approx(0.023)
    rate = 1 / 0.023  # a sequential client at that pace
    assert decide(queued=1, oldest_age=0.0, rate=rate, a=model.a, b=model.b, max_batch=32).send == 1

"""The CPU thread policy (rlvr_fast/_threads.py): threads follow the cores others leave idle."""

import pytest
import torch

from rlvr_fast import _threads as T


@pytest.fixture
def clock(monkeypatch):
    """A fake machine: wall time, busy seconds of all cores, and our own CPU seconds, set by the test."""
    state = {"wall": 100.0, "busy": 1000.0, "own": 10.0}
    monkeypatch.setattr(T, "_cores", lambda: [0, 1])
    monkeypatch.setattr(T.time, "monotonic", lambda: state["wall"])
    monkeypatch.setattr(T, "_busy_seconds", lambda cores: state["busy"])
    monkeypatch.setattr(T, "_own_seconds", lambda: state["own"])
    before = torch.get_num_threads()
    yield state
    torch.set_num_threads(before)


def _advance(state, wall, others, own):
    state["wall"] += wall
    state["own"] += own
    state["busy"] += others + own


def test_busy_neighbour_drops_to_one_thread_then_back(clock):
    torch.set_num_threads(2)
    pol = T.CpuThreads("auto", interval_s=5.0)
    assert pol.step() == 2  # nothing measured yet
    _advance(clock, 5.0, others=7.5, own=9.0)  # others used 1.5 of 2 cores
    assert pol.others_busy() == pytest.approx(1.5)
    assert pol.step() == 1 and torch.get_num_threads() == 1
    _advance(clock, 5.0, others=0.5, own=5.0)  # others at 0.1 cores: both cores idle for us
    assert pol.step() == 2 and torch.get_num_threads() == 2


def test_half_busy_core_is_not_counted_idle(clock):
    torch.set_num_threads(2)
    pol = T.CpuThreads("auto", interval_s=1.0)
    _advance(clock, 1.0, others=0.5, own=1.5)
    assert pol.step() == 1
    _advance(clock, 1.0, others=0.2, own=1.0)
    assert pol.step() == 2


def test_looks_only_every_interval(clock):
    torch.set_num_threads(2)
    pol = T.CpuThreads("auto", interval_s=5.0)
    _advance(clock, 2.0, others=2.0, own=1.0)  # fully busy neighbours, but too soon to look
    assert pol.step() == 2
    _advance(clock, 3.0, others=3.0, own=1.0)
    assert pol.step() == 1


def test_fixed_setting_is_never_changed(clock):
    pol = T.CpuThreads(1, interval_s=0.0)
    assert torch.get_num_threads() == 1
    _advance(clock, 5.0, others=0.0, own=5.0)
    assert pol.step() == 1 and torch.get_num_threads() == 1


def test_without_proc_keeps_the_count(monkeypatch):
    monkeypatch.setattr(T, "_busy_seconds", lambda cores: None)
    n = torch.get_num_threads()
    pol = T.CpuThreads("auto", interval_s=0.0)
    assert pol.step() == n and pol.others_busy() is None


def test_real_proc_reading_is_sane():
    busy = T._busy_seconds(T._cores())
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert busy > 0 and T._own_seconds() > 0


def test_config_refuses_negative_threads():
    from rlvr_fast.trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="trainer.cpu_threads"):
        load_config(None, ["trainer.cpu_threads=-1"])

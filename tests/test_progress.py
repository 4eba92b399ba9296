"""Long loops log their rate and remaining time (Detectron2's log_every_n_seconds)."""

import logging

import pytest

from wsss_d2.ops.pool import map_in_pool
from wsss_d2.ops.progress import Progress


@pytest.fixture
def logs(caplog):
    lg = logging.getLogger("wsss_d2")
    old = lg.propagate
    lg.propagate = True
    caplog.set_level(logging.INFO, logger="wsss_d2")
    yield caplog
    lg.propagate = old


def test_progress_lines_give_rate_and_eta(logs):
    with Progress(4, "CRF", period=0.0) as p:
        for _ in range(4):
            p.update()
    lines = [r.getMessage() for r in logs.records]
    assert any(
        line.startswith("CRF: 1/4 img (25%)") and "img/s, ETA 0:00:" in line for line in lines
    )
    assert any(line.startswith("CRF: 4 img in ") for line in lines)


def test_disabled_progress_logs_nothing(logs):
    with Progress(3, "quiet", enabled=False, period=0.0) as p:
        p.update(3)
    assert not [r for r in logs.records if "quiet" in r.getMessage()]


def test_pool_loops_log_their_progress(logs):
    assert list(map_in_pool(abs, [-1, -2, 3], 1, desc="labels (crf)")) == [1, 2, 3]
    assert any(r.getMessage().startswith("labels (crf): 3 img in") for r in logs.records)


def test_pool_progress_complete_when_the_consumer_stops_at_the_last_item(logs):
    items = [1, 2, 3]
    for _ in zip(items, map_in_pool(abs, items, 1, desc="zipped")):
        pass  # zip never resumes the generator after its last item
    assert any(r.getMessage().startswith("zipped: 3 img in") for r in logs.records)

"""Structured log lines and the rate limiter that keeps bad peers from flooding them."""

from __future__ import annotations

import io
import json
import logging

import pytest

from broker import logging as blog

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def stream():
    out = io.StringIO()
    handler = blog.configure("info", "kv", out)
    yield out
    root = logging.getLogger("tidelog")
    root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)


def test_kv_lines_quote_values_that_need_it_and_skip_debug(stream):
    log = blog.get_logger("test")
    log.debug("hidden", a=1)
    log.info("ready", node_id=1, listen="127.0.0.1:9", detail='two words "quoted"', empty="")
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("ts=") and " level=info event=ready node_id=1 listen=127.0.0.1:9 " in line
    assert 'detail="two words \\"quoted\\""' in line and 'empty=""' in line


def test_json_lines_parse_back():
    out = io.StringIO()
    handler = blog.configure("debug", "json", out)
    try:
        blog.get_logger("test").warning("bad_frame", peer="1.2.3.4:5", size=7, ok=True)
        event = json.loads(out.getvalue())
        assert event["event"] == "bad_frame" and event["level"] == "warning"
        assert (event["peer"], event["size"], event["ok"]) == ("1.2.3.4:5", 7, True)
    finally:
        logging.getLogger("tidelog").removeHandler(handler)
        logging.getLogger("tidelog").propagate = True


def test_rate_limiter_allows_a_burst_then_reports_what_it_suppressed():
    now = [0.0]
    limiter = blog.RateLimiter(burst=2, interval_s=10, clock=lambda: now[0])
    assert [limiter.allow("k")[0] for _ in range(5)] == [True, True, False, False, False]
    assert limiter.allow("other") == (True, 0)  # keys are independent
    now[0] = 10.0
    assert limiter.allow("k") == (True, 3)  # the next window reports the 3 suppressed lines

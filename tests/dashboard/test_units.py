"""Pure parts of the dashboard: strings, SVG charts, login cookie, usage bucketing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scheduler.dashboard import i18n
from scheduler.dashboard.auth import DashboardAuth, LoginOutcome
from scheduler.dashboard.svg import Series, line_chart
from scheduler.dashboard.usage import UsagePoint, bucket_usage, chart_data

SRC = Path(__file__).resolve().parents[2] / "scheduler" / "dashboard"


def test_both_languages_name_the_same_keys_and_every_used_key_exists() -> None:
    assert set(i18n.EN) == set(i18n.ZH)
    used = set()
    for path in SRC.glob("*.py"):
        used |= set(re.findall(r't\(lang, "([a-z_.]+)"\)', path.read_text()))
    used = {u for u in used if not u.endswith(".")}
    assert used and used <= set(i18n.EN), used - set(i18n.EN)
    assert i18n.pick_lang("zh") == "zh" and i18n.pick_lang("fr") == "en"
    assert i18n.pick_lang(None) == "en"


def test_line_chart_draws_one_path_per_series_scaled_to_the_max() -> None:
    svg = line_chart(
        "吞吐 <t>", ["a", "b", "c"], [Series("s1", (0.0, 5.0, 10.0)), Series("s2", (1, 1, 1))],
        "empty", "c1", "time",
    )  # fmt: skip
    assert svg.count('<path class="series"') == 2
    assert "吞吐 &lt;t&gt;" in svg and ">10<" in svg  # escaped title, max tick
    first = re.search(r'd="M ([^"]+)"', svg)
    assert first is not None
    ys = [float(p.split(",")[1]) for p in first.group(1).split(" L ")]
    assert ys[0] > ys[1] > ys[2]  # rising values go up the screen
    assert "empty" in line_chart("t", [], [], "empty", "c2") and "<path" not in line_chart(
        "t", ["a"], [Series("s", ())], "empty", "c3"
    )


def test_login_sets_an_hmac_never_the_token_and_refuses_tenant_keys() -> None:
    auth = DashboardAuth("adm-cl-secret", is_tenant_key=lambda s: s == "legacy-tenant", key=b"k")
    assert auth.login("adm-cl-secret") is LoginOutcome.OK
    cookie = auth.session_cookie()
    assert "adm-cl-secret" not in cookie and len(cookie) == 64
    assert auth.valid(cookie) and not auth.valid("0" * 64) and not auth.valid(None)
    assert auth.login("sk-cl-abc") is LoginOutcome.TENANT_KEY
    assert auth.login("legacy-tenant") is LoginOutcome.TENANT_KEY
    assert auth.login("  ") is LoginOutcome.EMPTY
    assert auth.login("adm-cl-wrong") is LoginOutcome.WRONG
    # another process (another key) does not accept this cookie
    assert not DashboardAuth("adm-cl-secret").valid(cookie)
    with pytest.raises(ValueError):
        DashboardAuth("")


def test_buckets_and_chart_definitions() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def point(s: float, tokens: int, yuan: float) -> UsagePoint:
        return UsagePoint(t0 + timedelta(seconds=s), "t", "m", "c", "s", 200, 1, tokens, yuan)

    points = [point(1, 100, 0.01), point(59, 50, 0.02), point(61, 30, 0.0), point(200, 9, 1)]
    buckets, width_s = bucket_usage(points, t0, t0 + timedelta(seconds=120), 2)
    assert width_s == 60
    assert [(b.requests, b.completion_tokens) for b in buckets] == [(2, 150), (1, 30)]
    data = chart_data(buckets, width_s, fleet_full_yuan_per_hour=3.6, ready_yuan_per_hour=1.8)
    assert data.throughput_tokens_per_s == (2.5, 0.5)
    assert data.tokens_per_yuan == pytest.approx((150 / 0.06, 30 / 0.06))
    assert data.utilisation == pytest.approx((0.03 / 0.03, 0.0))
    assert chart_data(buckets, width_s, 0.0, 0.0).tokens_per_yuan == (0.0, 0.0)

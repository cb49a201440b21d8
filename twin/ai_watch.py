"""The detector's outcomes watched per device: is this device's positive rate or score distribution
still what it was?

The node hands the twin each analysed image's outcome as plain numbers (:meth:`TwinStore.
record_ai_outcome`): the image-level score (opacity probability, the best box's score), the number of
findings at the node's operating threshold, and whether the image was skipped (not analysed). An
image is **positive** when it has at least one finding at the operating threshold (equivalently, its
score is at or above the threshold: the findings are the boxes at or above it).

Per device the outcomes are compared with the device's own baseline, the first ``ai_baseline_n``
analysed images after the latest **reference point**: a configuration change (twin_config) or a
``qc`` maintenance record (a person checked the images and accepts them), or the device's first
image. Two comparisons, each by two tests:

- **change**: at a configuration change, the images after it against those before it (up to
  ``ai_change_n`` on each side), so a software update that changes what the model sees is named. The
  group after grows day by day until it holds ``ai_change_n``: a jump too small to show in the first
  days is still caught later (the drift look cannot catch it: its baseline is the images after the
  change);
- **drift**: the images of the last ``ai_window_days`` complete days against the baseline.

Tests: the positive rate by Fisher's exact test (two-sided, the 2 x 2 table of positive and negative
images; Fisher 1935, Agresti *Categorical Data Analysis* 3.5.1), the score distribution by the
two-sample Kolmogorov-Smirnov test (asymptotic p-value with Stephens' small-sample correction,
Stephens 1970; Numerical Recipes 14.3; conservative with the ties at score 0). A look runs at most
four tests, each at ``ai_alpha / tests``, so (Bonferroni) a stable device gets a false WARN at one
look with probability at most ``ai_alpha``. Looks are made on complete UTC days only, so a device is
looked at once a day whatever ``twin.evaluate_every_s``: over a year the false-alarm probability is at
most 365 x ``ai_alpha`` (union bound; the looks overlap, so in practice less). No scipy is needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import numpy as np

from twin.db import from_iso, iso, one, rows

#: maintenance kind that restarts the AI baseline without a comparison with before
ACCEPT_KIND = "qc"
#: words for the configuration fields in a change's description
FIELD_WORDS = {
    "software_versions": "software",
    "detector_id": "detector",
    "detector_type": "detector type",
    "detector_manufacturer": "detector make",
    "detector_model": "detector model",
    "grid_id": "grid",
    "grid": "grid",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One analysed image: when it was acquired, its score (None: none given) and whether positive."""

    at: datetime
    score: float | None
    positive: bool


@dataclass(frozen=True, slots=True)
class Reference:
    """Where the baseline restarts: a configuration change (``what`` names it) or a ``qc`` record."""

    at: datetime
    what: str
    config_change: bool


@dataclass(frozen=True, slots=True)
class AiHistory:
    """What the AI rule needs, as of the end of the last complete UTC day (``as_of``)."""

    as_of: datetime
    reference: Reference | None = None
    before: Sequence[Outcome] = ()  # the last ai_change_n analysed images before the reference
    baseline: Sequence[Outcome] = ()  # the first ai_baseline_n analysed images after it
    recent: Sequence[Outcome] = ()  # those of the last ai_window_days days, after the baseline
    after: Sequence[Outcome] = ()  # the first ai_change_n after it (empty: the baseline stands for them)

    def changed(self) -> Sequence[Outcome]:
        """The images after the reference that the change look compares with ``before``."""
        return self.after or self.baseline


# --- the tests ---------------------------------------------------------------------------------------


def fisher_exact(pos_a: int, n_a: int, pos_b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test on the positives of two groups: the probability,
    under equal rates and the margins fixed, of a table no more likely than the one seen (the sum
    over the hypergeometric distribution, built by the ratio of successive terms; relative tolerance
    1e-7 for ties in probability)."""
    total_pos = pos_a + pos_b
    if n_a <= 0 or n_b <= 0 or total_pos in (0, n_a + n_b):
        return 1.0
    lo, hi = max(0, total_pos - n_b), min(total_pos, n_a)
    x = np.arange(lo, hi, dtype=float)
    # P(x + 1) / P(x) = (n_a - x)(K - x) / ((x + 1)(n_b - K + x + 1)), K the positives in all
    steps = np.log((n_a - x) * (total_pos - x)) - np.log((x + 1) * (n_b - total_pos + x + 1))
    logp = np.concatenate(([0.0], np.cumsum(steps)))
    logp -= logp.max()
    p = np.exp(logp)
    seen = logp[pos_a - lo]
    return float(min(1.0, p[logp <= seen + 1e-7 * max(1.0, abs(seen))].sum() / p.sum()))


def _kolmogorov_q(lam: float) -> float:
    """Q_KS(λ) = 2 Σ (-1)^(j-1) exp(-2 j² λ²), the Kolmogorov distribution's upper tail."""
    if lam < 0.2:
        return 1.0
    total, sign = 0.0, 1.0
    for j in range(1, 101):
        term = sign * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
        sign = -sign
    return max(0.0, min(1.0, 2.0 * total))


def ks_2samp(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its asymptotic two-sided p-value,
    Q_KS((sqrt(Ne) + 0.12 + 0.11/sqrt(Ne)) D) with Ne = n·m/(n+m) (Stephens 1970)."""
    if not a or not b:
        return 0.0, 1.0
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, "right") / len(x) - np.searchsorted(y, grid, "right") / len(y))))
    ne = len(x) * len(y) / (len(x) + len(y))
    root = math.sqrt(ne)
    return d, _kolmogorov_q((root + 0.12 + 0.11 / root) * d)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two groups of outcomes compared: rates, mean scores and each test's p-value."""

    n_a: int
    n_b: int
    rate_a: float
    rate_b: float
    p_rate: float
    mean_a: float | None
    mean_b: float | None
    ks_d: float
    p_scores: float

    def shifted(self, level: float) -> tuple[bool, bool]:
        """(positive rate shifted, score distribution shifted) at ``level`` per test."""
        return self.p_rate < level, self.p_scores < level


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compare(a: Sequence[Outcome], b: Sequence[Outcome]) -> Comparison:
    """Group ``a`` (the reference) against group ``b``: Fisher's exact test on the positive rate,
    Kolmogorov-Smirnov on the scores."""
    pos_a, pos_b = sum(o.positive for o in a), sum(o.positive for o in b)
    sa = [o.score for o in a if o.score is not None]
    sb = [o.score for o in b if o.score is not None]
    d, p_scores = ks_2samp(sa, sb)
    return Comparison(
        len(a), len(b), pos_a / len(a) if a else 0.0, pos_b / len(b) if b else 0.0,
        fisher_exact(pos_a, len(a), pos_b, len(b)), _mean(sa), _mean(sb), d, p_scores,
    )


# --- reading and writing -----------------------------------------------------------------------------


def describe_change(changes_json: str | None) -> str:
    """``software 4.3.0`` from a twin_config row's changes (several fields joined by commas)."""
    try:
        changes = json.loads(changes_json or "[]")
    except ValueError:
        return "configuration change"
    words = [f"{FIELD_WORDS.get(str(c.get('field')), str(c.get('field')))} {c.get('to')}" for c in changes
             if isinstance(c, dict)]
    return ", ".join(words) or "configuration change"


def config_changes(db: Any, device_id: int, before: datetime) -> list[tuple[datetime, str]]:
    """(since, what) of every configuration change of the device that began before ``before``."""
    out = []
    for r in rows(
        db,
        "SELECT since, changes FROM twin_config WHERE device_id = ? AND changes IS NOT NULL "
        "AND changes != '[]' AND since < ? ORDER BY since, id",
        [device_id, iso(before)],
    ):
        if (t := from_iso(r["since"])) is not None:
            out.append((t, describe_change(r["changes"])))
    return out


def reference_point(
    db: Any, device_id: int, changes: Sequence[tuple[datetime, str]], before: datetime
) -> Reference | None:
    """The latest configuration change or ``qc`` record before ``before``; None when neither."""
    found: list[Reference] = [Reference(t, what, True) for t, what in changes]
    qc = one(
        db,
        "SELECT max(at) AS at FROM twin_maintenance WHERE device_id = ? AND kind = ? AND at < ?",
        [device_id, ACCEPT_KIND, iso(before)],
    )
    if qc and (t := from_iso(qc["at"])) is not None:
        found.append(Reference(t, f"{ACCEPT_KIND} record", False))
    return max(found, key=lambda r: (r.at, not r.config_change), default=None)


def _outcomes(db: Any, sql: str, params: list[Any]) -> list[Outcome]:
    return [
        Outcome(t, r["score"], bool(r["positive"]))
        for r in rows(db, sql, params)
        if (t := from_iso(r["at"])) is not None
    ]


ANALYSED = "SELECT at, score, positive FROM twin_ai_outcomes WHERE device_id = ? AND skipped = 0 "


def last_complete_day(now: datetime) -> datetime:
    """Midnight (UTC) that ends the last complete day: looks use data up to it, once a day."""
    return datetime.combine(now.astimezone(UTC).date(), time(), UTC)


def ai_history(
    db: Any, device_id: int, now: datetime, baseline_n: int, window_days: int,
    change_n: int = 0,
) -> AiHistory:
    """The reference point, the images just before it, the baseline after it and the recent window,
    as of the end of the last complete UTC day before ``now`` (``change_n``: how many on each side of
    a configuration change the change look compares; at least ``baseline_n``)."""
    as_of = last_complete_day(now)
    changes = config_changes(db, device_id, as_of)
    ref = reference_point(db, device_id, changes, as_of)
    start = iso(ref.at) if ref else ""
    n = max(int(baseline_n), 1)
    m = max(int(change_n), n)
    before = (
        list(reversed(_outcomes(db, ANALYSED + "AND at < ? ORDER BY at DESC, sop_instance_uid DESC LIMIT ?",
                                [device_id, start, m])))
        if ref
        else []
    )
    after = _outcomes(db, ANALYSED + "AND at >= ? AND at < ? ORDER BY at, sop_instance_uid LIMIT ?",
                      [device_id, start, iso(as_of), m if ref and ref.config_change else n])
    baseline = after[:n]
    recent: list[Outcome] = []
    if len(baseline) >= n:
        window = max(iso(baseline[-1].at), iso(as_of - timedelta(days=window_days)))
        recent = _outcomes(db, ANALYSED + "AND at > ? AND at < ? ORDER BY at, sop_instance_uid",
                           [device_id, window, iso(as_of)])
    return AiHistory(as_of, ref, before, baseline, recent, after)


def kept_outcomes_sql(limit: int) -> str:
    """Outcomes retention keeps: the baseline after the reference point and the images before it
    (``:device``, ``:after``), as the exposure-index baseline is kept."""
    n = int(limit)
    return (
        f"SELECT sop_instance_uid FROM (SELECT sop_instance_uid FROM twin_ai_outcomes WHERE device_id = :device "
        f"AND skipped = 0 AND at >= :after ORDER BY at, sop_instance_uid LIMIT {n}) AS baseline "
        f"UNION SELECT sop_instance_uid FROM (SELECT sop_instance_uid FROM twin_ai_outcomes "
        f"WHERE device_id = :device AND skipped = 0 AND at < :after "
        f"ORDER BY at DESC, sop_instance_uid DESC LIMIT {n}) AS before_ref"
    )


def ai_view(db: Any, device_id: int, hist: AiHistory, now: datetime) -> dict[str, Any]:
    """The ``ai`` object of ``device ID --json``: baseline, recent window, daily counts and the
    configuration changes (docs/twin.md, The AI, watched per device)."""
    def rate(outcomes: Sequence[Outcome]) -> float | None:
        return round(sum(o.positive for o in outcomes) / len(outcomes), 4) if outcomes else None

    ref = hist.reference
    since = ref.at if ref else (hist.baseline[0].at if hist.baseline else None)
    daily = [
        {
            "day": r["day"],
            "analysed": r["ai_analysed"],
            "positive": r["ai_positive"],
            "skipped": r["ai_skipped"],
            "mean_score": round(r["ai_score_sum"] / r["ai_score_n"], 4) if r["ai_score_n"] else None,
        }
        for r in rows(
            db,
            "SELECT day, ai_analysed, ai_positive, ai_skipped, ai_score_n, ai_score_sum FROM twin_daily "
            "WHERE device_id = ? AND day <= ? AND (ai_analysed > 0 OR ai_skipped > 0) ORDER BY day",
            [device_id, iso(now)[:10]],
        )
    ]
    return {
        "baseline": {
            "n": len(hist.baseline),
            "positive_rate": rate(hist.baseline),
            "since": iso(since) if since else None,
            "config_change": ref.what if ref and ref.config_change else None,
        },
        "recent": {"n": len(hist.recent), "positive_rate": rate(hist.recent)},
        "daily": daily,
        "config_changes": [{"at": iso(t), "what": what} for t, what in config_changes(db, device_id, now)],
    }

"""The soak (bench/soak.py) for 60 seconds in CI: 6 real-time streams with endpointing and finalizes, batch jobs of
mixed lengths with a 10-minute file, connection churn and a hostile client, all at once against the real worker.

No final may be lost (each equals its utterance streamed alone), no good job may fail, the worker must be alive at
the end and must never cross the memory watchdog's limit (which kills it, so a leak fails this test and not the
machine). RSS growth over 60 s is reported, not asserted: a minute is too short to tell growth from warm-up.

A finalize or stop of a stretch without heard speech is an optional final (bench.soak's judge): the server
decodes it only when a partial step had already committed a word of the noise, which depends on load."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from bench.soak import SoakConfig, run_soak

log = logging.getLogger(__name__)

CI_SECONDS = 60.0
CI_MAX_RSS_MIB = 8_000.0  # the worker with the test model stays near 1-2 GB; a regression dies here, not the box


def test_a_minute_of_hostile_and_heavy_use_loses_no_final_and_fails_no_good_job(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    config = SoakConfig(duration_s=CI_SECONDS, session_s=25.0, max_rss_mib=CI_MAX_RSS_MIB, rss_baseline_s=20.0)
    report = run_soak(config, log_dir=tmp_path)
    (tmp_path / "soak.json").write_text(json.dumps(report, indent=2))
    summary = {k: report[k] for k in ("lost_finals", "failed_good_jobs", "finalize_p99_ms", "worker_alive_at_end")}
    rss = {k: v for k, v in report["rss"].items() if k != "series"}
    log.warning("soak: %s rss: %s (report: %s)", json.dumps(summary), json.dumps(rss), tmp_path / "soak.json")
    record_property("soak", json.dumps(summary | {"rss": rss}))  # in the JUnit report of a CI run
    details = json.dumps({k: report[k] for k in ("streams", "batch", "churn", "hostile", "hostile_unexpected")},
                         indent=1)[:6000]
    assert report["rss"].get("killed_at_mib") is None, f"the worker crossed {CI_MAX_RSS_MIB} MiB: {report['rss']}"
    assert report["worker_alive_at_end"], report.get("worker_log_tail")
    assert report["clients_crashed"] == [] and report["clients_unfinished"] == 0, details
    assert report["streams"]["sessions"] >= config.streams and report["batch"]["jobs"] >= 2, details
    assert report["lost_finals"] == 0, details
    assert report["failed_good_jobs"] == 0, details
    assert report["streams"]["final_text_mismatches"] == 0, details
    assert report["streams"]["stopped_error_codes"] == {}, details  # no session reported a lost final itself
    assert report["churn"].get("stuck", 0) == 0, details  # every dropped session's job ended
    assert report["hostile_unexpected"] == [], details  # every bad input refused with an error, nothing hung
    assert report["platform_protocol_errors"] == [], report["platform_protocol_errors"]

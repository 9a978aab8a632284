"""Progress lines of long phases (gemma_tool_use/progress.py): step, metrics, ETA, pipeline position."""

import logging

from gemma_tool_use.utils.progress import POSITION_ENV, StepProgress, format_seconds


def test_log_lines_carry_step_metrics_eta_and_the_pipeline_position(monkeypatch, caplog):
    monkeypatch.setenv(POSITION_ENV, "pipeline cpu, stage 2/4: 2_sft_full")
    clock = iter([0.0, 100.0, 110.0, 120.0, 130.0]).__next__
    monkeypatch.setattr("gemma_tool_use.utils.progress.time.perf_counter", clock)
    p = StepProgress(total=10, initial=2, desc="sft_full", interval_s=15.0, tty=False)
    with caplog.at_level(logging.INFO, logger="gemma_tool_use.progress"):
        first = p.update(3, loss=0.5123, tok_s=410.0, rss_gib=15.25)  # 100 s (compiles)
        p.update(4, loss=0.5)  # 10 s: within 15 s of the last line
        third = p.update(5, loss=0.49)  # 10 s
    assert first.startswith("[pipeline cpu, stage 2/4: 2_sft_full] sft_full step 3/10 | loss 0.5123 | tok_s 410")
    assert "rss_gib 15.25" in first and "ETA 11m40s" in first  # only one step timed: 100 s x 7 left
    assert third.endswith("ETA 0m50s")  # the compiling first step left out: 10 s x 5 left
    assert [r.getMessage() for r in caplog.records] == [first, third]


def test_the_last_step_is_always_shown_and_a_terminal_gets_a_bar(capsys):
    p = StepProgress(total=2, desc="grpo", interval_s=1e9, tty=True)
    p.update(1, reward=0.5)
    p.update(2, reward=0.7)
    p.close()
    assert "grpo" in capsys.readouterr().err
    assert format_seconds(3725) == "1h02m" and format_seconds(None) == "?"

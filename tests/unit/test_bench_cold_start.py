"""The cold-start figures' measurement (bench/run.py): both halves in one fresh interpreter."""

from __future__ import annotations

from bench.run import cold_ratio, import_split


def test_the_second_statement_runs_in_the_interpreter_that_ran_the_first() -> None:
    # A module the first statement imported is already loaded for the second: the same
    # interpreter, timed in two parts. (`decimal` is not imported at interpreter start.)
    first, then = import_split("import decimal", "import decimal")
    assert first > 0
    assert then < first / 10


def test_the_ratio_is_the_whole_import_over_the_libraries_part() -> None:
    # The handler's statement here imports nothing new: its cold start is its libraries'.
    ratio, handler, libraries = cold_ratio("import decimal", "import decimal", reps=3)
    assert 1.0 <= ratio < 1.1
    assert libraries <= handler < libraries * 1.1

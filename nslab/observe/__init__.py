"""Observe a running lab: show, capture, trace, checks (the tests: runner), graph, probe,
decode."""

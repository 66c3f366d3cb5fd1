"""Test doubles that behave like the real thing, for the tests and the benchmarks (which must not import
``tests``): fake Slack and Discord servers on 127.0.0.1, a real redis-server and ``engbot worker`` processes,
tiny legacy GGML model files, and a submitter that plays scripted events."""

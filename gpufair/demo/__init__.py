"""The parts of ``gpufair demo`` that are not process plumbing: its scenario file, the naive
split it is compared with, and the claims its summary checks (docs/architecture.md §5).

Kept apart from :mod:`gpufair.commands.demo` so that each is a pure function of its inputs and
tested without starting a server.
"""

"""Reliability harness, pure parts: scenario results, report rendering, recovery and gap logic.

The I/O (starting the stack, injecting faults, reading Kafka and Redis) lives in
``tests/reliability``; everything here is plain data and arithmetic, unit-tested without servers.
"""

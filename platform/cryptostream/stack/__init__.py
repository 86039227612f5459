"""The local embedded stack: real Kafka and Redis servers as supervised child processes."""

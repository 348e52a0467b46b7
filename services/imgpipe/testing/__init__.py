"""Helpers shared by the test suite and the benchmarks: waiting on conditions, Kafka I/O."""

"""The shared service runtime: settings, logging, health server, Kafka producer and consume loop."""

"""ingest: the HTTP API, the submit-topic consumer, the outbox relay, the projector and the reaper."""

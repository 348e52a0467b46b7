"""The local stack: real Kafka, Postgres and S3 started as local processes for `make up` and the tests."""

"""imgpipe: a Kafka pipeline for AI image editing."""

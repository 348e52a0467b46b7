"""Contracts: the topic registry (schemas/) and the protobuf types generated from proto/."""

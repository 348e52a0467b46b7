"""Helpers for the Kubernetes packaging (charts/imgpipe, skaffold.yaml): pinned validation tools
fetched through package registries only, and schemas converted for offline validation."""

"""The callback service: tells clients about finished tasks with signed webhooks (Standard Webhooks).

Pure building blocks: `signing` (per-tenant secrets derived from master keys, headers, webhook ids),
`payloads` (callback bodies per schemas/json/callback.v1.schema.json), `backoff` (retry delays, the
per-URL circuit breaker) and `sender` (one SSRF-guarded POST reported as a `SendResult`). The faust app
that ties them together is `app`.
"""

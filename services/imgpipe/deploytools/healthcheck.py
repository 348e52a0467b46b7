"""The image's Docker HEALTHCHECK: `python -m imgpipe.deploytools.healthcheck`.

Kubernetes probes the services itself (charts/imgpipe); this is for a plain `docker run`, where one
image runs any subcommand: healthy when /healthz answers 200 on the consumers' health port or on
the API's port (IMGPIPE_HEALTH_PORT, IMGPIPE_API_PORT, defaults from the settings classes).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from imgpipe.ingest.settings import IngestSettings
from imgpipe.runtime.settings import ENV_PREFIX

PORT_SETTINGS = ("health_port", "api_port")


def candidate_ports() -> list[str]:
    fields = IngestSettings.model_fields
    return [os.environ.get(ENV_PREFIX + name.upper(), str(fields[name].default)) for name in PORT_SETTINGS]


def healthy(port: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def main() -> int:
    return 0 if any(healthy(port) for port in candidate_ports()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""imgpipe: a Kafka pipeline for AI image editing."""

import sys

# httpx's package __init__ imports its command-line tool (httpx._main, which pulls in rich, pygments
# and click: ~0.5 s of CPU) whenever those happen to be installed, and they are, as dependencies of
# other tools. No imgpipe process runs that tool, yet each one that imports httpx (the stages, the
# callback service, `imgpipe pipeline`) paid for it at start-up. A None entry in sys.modules makes
# that one import fail, and httpx then defines its stub `main` instead.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

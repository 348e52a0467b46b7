# syntax=docker/dockerfile:1
# One image for every imgpipe service: `imgpipe <subcommand>` (the chart's components pick it).
# Dependencies come from uv.lock only (`uv sync --frozen`); the project is installed as a wheel,
# which carries the topic registry (schemas/ -> imgpipe/_schemas).
#
# Both stages use one base, BASE_IMAGE, pinned by exact tag by default (tests/chart checks it). To pin
# the digest as well, `docker buildx imagetools inspect python:3.11.14-slim-bookworm` and append
# @sha256:<digest> to the default (not done here: this repository's machines reach no container
# registry). `make image` overrides it with a local Debian bookworm base (tools/image-base.sh):
# the stages only rely on `python3` (with venv) on PATH, groupadd/useradd and CA certificates.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Where the build machine reaches PyPI through a TLS-intercepting proxy, `make image` mounts the
# machine's CA bundle over the base's for the RUN steps and names it in these (pip and uv bring CA
# roots of their own otherwise); unset in a plain build. Build arguments of this stage only: the
# final image has the base's bundle and neither variable.
ARG SSL_CERT_FILE
ARG PIP_CERT
# The same uv as the Makefile (UV_VERSION), from PyPI, in a venv of its own (Debian's Python has no
# pip; the slim base's would do, but this works with both).
ARG UV_VERSION=0.13.8
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}" \
    && ln -s /opt/uv/bin/uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/imgpipe
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --no-install-project
COPY services ./services
COPY schemas ./schemas
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --no-editable

FROM ${BASE_IMAGE}
# A numeric, non-root user (the chart's runAsUser) so the kubelet can verify runAsNonRoot.
RUN groupadd --system --gid 10001 imgpipe \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/imgpipe --shell /usr/sbin/nologin imgpipe \
    && install -d -o 10001 -g 10001 /var/lib/imgpipe
COPY --from=build /opt/imgpipe /opt/imgpipe
# The root filesystem is read-only in Kubernetes: bytecode is compiled at build time, and HOME and
# the working directory (faust's table data) are an emptyDir, as is /tmp.
ENV PATH=/opt/imgpipe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/imgpipe
WORKDIR /var/lib/imgpipe
USER 10001:10001
EXPOSE 8080 8081
# Kubernetes probes the services itself (chart); this is for a plain `docker run`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["python", "-m", "imgpipe.deploytools.healthcheck"]
ENTRYPOINT ["imgpipe"]
CMD ["--help"]

# dsproxy container image.
#
#   docker build -t dsproxy:0.1.0 .
#   docker run --rm --network host -v "$PWD/config.toml:/etc/dsproxy/config.toml:ro" dsproxy:0.1.0
#
# The image carries no config of its own (upstream.url has no default): mount one at
# /etc/dsproxy/config.toml. Arguments after the image name are appended to the
# ENTRYPOINT, so flags override the file: `docker run ... dsproxy:0.1.0 --log-level debug`.

# --- build stage: compilers live here only ------------------------------------------
FROM python:3.12-slim AS build

# The image ships the compiled build: DSPROXY_COMPILE=1 has mypyc compile the hot-path
# modules (setup.py), which needs a C compiler, here only. Not pinned (DL3008):
# Debian's versions change under a fixed tag, and nothing built here is kept.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# A virtual environment is one directory to copy into the final stage.
RUN python -m venv /opt/dsproxy
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY _build ./_build
COPY dsproxy ./dsproxy
RUN DSPROXY_COMPILE=1 /opt/dsproxy/bin/python -m pip install --no-cache-dir ".[speedups]" \
    && /opt/dsproxy/bin/dsproxy --version > /tmp/version \
    && grep -qx "build: compiled" /tmp/version \
    && /opt/dsproxy/bin/python -m pip uninstall -y pip

# --- final stage: the interpreter, the venv, nothing else ----------------------------
FROM python:3.12-slim

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER,
# and k8s/ sets runAsUser/runAsGroup to the same numbers.
RUN groupadd --system --gid 10001 dsproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin dsproxy \
    && mkdir -p /etc/dsproxy

COPY --from=build /opt/dsproxy /opt/dsproxy

# Bytecode was compiled at install time; the root filesystem may be read-only.
ENV PATH="/opt/dsproxy/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001

# 16980: the proxy (server.listen); 16981: the admin listener's default address;
# 16443: TLS, when server.tls_listen (or --tls-listen) asks for it (docs/deploy.md, "TLS").
EXPOSE 16980 16981 16443

# The admin listener's default is 127.0.0.1:16981 (admin.listen; the tests keep the two
# in step). A config that moves it needs `docker run --health-cmd ...`. slim has no curl;
# urlopen raises (exit 1) on a refused connection or a non-2xx status.
# Kubernetes ignores HEALTHCHECK: the manifests in k8s/ declare their own probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:16981/healthz', timeout=2)"]

# Exec form: dsproxy is PID 1 and receives SIGTERM itself (docker stop, kubelet), so it
# can fail readiness, keep serving shutdown.delay seconds, then drain (docs/deploy.md).
ENTRYPOINT ["dsproxy", "run", "-c", "/etc/dsproxy/config.toml"]

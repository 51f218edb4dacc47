# proxy-pool: the gateway on 0.0.0.0:8899 inside the container.
# Map it to loopback on the host:  docker run -p 127.0.0.1:8899:8899 proxy-pool
# The base is a build argument so the image builds where no registry is reachable: any image with
# Python >= 3.11, `python3 -m venv` and useradd (docs/operate/docker.md builds one with debootstrap).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROXY_POOL_GATEWAY__LISTEN=0.0.0.0:8899 \
    PROXY_POOL_GATEWAY__ALLOW_OPEN=true \
    PROXY_POOL_STORAGE__PATH=/data/proxy-pool.db \
    PROXY_POOL_PLUGINS__CONTRIB_DIR=/app/plugins-contrib

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY gateway ./gateway
COPY pool ./pool
COPY plugins ./plugins
# A virtualenv of its own, so a distribution's Python (PEP 668, no pip) serves as a base as well as
# python:*-slim. PIP_NO_INDEX / PIP_FIND_LINKS (unset by default) install from wheels instead of an index:
# podman build -v "$PWD/wheels:/wheels:ro" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels .
ENV PATH=/opt/proxy-pool/bin:$PATH
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN python3 -m venv /opt/proxy-pool \
    && pip install --no-cache-dir '.[speed]' \
    && useradd --system --home /data --create-home proxypool \
    && mkdir -p /app/plugins-contrib \
    && chown proxypool /data /app/plugins-contrib

USER proxypool
VOLUME ["/data", "/app/plugins-contrib"]
EXPOSE 8899 8898
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8898/healthz', timeout=3)" || exit 1
ENTRYPOINT ["proxy-pool"]
CMD ["serve"]

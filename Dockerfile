# syntax=docker/dockerfile:1
# The CPU image: the worker with onnxruntime (the `cpu` extra), the review page and the
# migrations. Build: docker build -t itmguard:0.1.0 .
# It runs as user 10001 with a read-only root filesystem: everything it writes goes under the
# VOLUMEs below (/tmp: Faust's data directory itmguard-<group>, HOME; the TensorRT cache dir,
# unused on CPU but kept so both images agree). No torch, no `export` extra.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY export ./export
COPY migrations ./migrations
COPY schemas ./schemas
RUN pip install '.[cpu]' \
    && python -m compileall -q /opt/venv/lib/python3.11/site-packages

FROM python:3.11.14-slim-bookworm
RUN groupadd --gid 10001 itmguard \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin itmguard \
    && mkdir -p /var/cache/itmguard/tensorrt \
    && chown -R 10001:10001 /var/cache/itmguard
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    ITMGUARD_TRT_CACHE_DIR=/var/cache/itmguard/tensorrt
VOLUME ["/tmp", "/var/cache/itmguard"]
USER 10001:10001
WORKDIR /tmp
# metrics, /livez, /readyz (worker); the review page
EXPOSE 9108 8080
ENTRYPOINT ["itmguard"]
CMD ["worker"]

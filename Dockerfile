# syntax=docker/dockerfile:1
# Postwarden image: one image for every role (ingest, worker, sinks, web,
# migrations); the Helm chart picks the role with the container args. The
# spam model, web templates and assets, the OpenAPI document and the Grafana
# dashboards travel inside the wheel as package data (pyproject.toml).
# In a container, listening on loopback only would reach nobody.

# The full image carries compilers for any dependency without a binary wheel;
# none of them reach the runtime image.
FROM python:3.11-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# Wheels for Postwarden and every dependency, so the runtime stage installs
# offline from exactly what was built here.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POSTWARDEN_DATA_DIR=/var/lib/postwarden \
    POSTWARDEN_SMTP_HOST=0.0.0.0 \
    POSTWARDEN_WEB_HOST=0.0.0.0 \
    POSTWARDEN_HEALTH_HOST=0.0.0.0
# bsdtar lets the attachment policy look inside packed RAR members.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libarchive-tools \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 postwarden \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/postwarden \
        --shell /usr/sbin/nologin postwarden \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/postwarden
# Bind-mounting the wheels keeps them out of the image's layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels postwarden
WORKDIR /var/lib/postwarden
# Numeric so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 2525 8000 8080
ENTRYPOINT ["postwarden"]
CMD ["--help"]

# tidelog broker image. Build: docker build -t tidelog .   Run: see docs/operating.md.
# Stage 1 builds the wheel; stage 2 installs only the wheel and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY client ./client
COPY storage ./storage
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 tidelog \
    && useradd --system --uid 10001 --gid tidelog --home-dir /var/lib/tidelog --shell /usr/sbin/nologin tidelog \
    && mkdir -p /var/lib/tidelog \
    && chown 10001:10001 /var/lib/tidelog
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Configuration by environment (TIDELOG_<SETTING>, see docs/operating.md). A broker listening
# on 0.0.0.0 must be told what to advertise: set TIDELOG_ADVERTISE=<reachable host>:9292.
ENV TIDELOG_DATA_DIR=/var/lib/tidelog \
    TIDELOG_LISTEN=0.0.0.0:9292 \
    TIDELOG_METRICS=0.0.0.0:9308 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/tidelog
VOLUME /var/lib/tidelog
EXPOSE 9292 9308
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('TIDELOG_METRICS', ':9308').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
# SIGTERM (docker stop) is a graceful stop: give it shutdown_timeout_ms (docker stop -t 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tidelog", "broker"]

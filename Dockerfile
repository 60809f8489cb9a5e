# The sobriety service image (ingest and the other stages, selected by the command).
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/sobriety sobriety
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY ingest ./ingest
COPY anomaly ./anomaly
COPY policies ./policies
COPY energy ./energy
COPY simulators ./simulators
COPY dashboards ./dashboards
COPY app ./app
# Without the [demo] extra: the production image has a broker and a database to talk to.
RUN pip install --no-cache-dir . && rm -rf /src
USER sobriety
WORKDIR /var/lib/sobriety
ENV SOBRIETY_SPOOL_DIR=/var/lib/sobriety/spool \
    SOBRIETY_METRICS_HOST=0.0.0.0
VOLUME ["/var/lib/sobriety/spool"]
ENTRYPOINT ["sobriety"]
CMD ["run"]

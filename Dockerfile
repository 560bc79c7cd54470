# Image for every Airflow component of the production topology
# (docker-compose.yaml). WSClean and AOFlagger come from Debian; CASA data from
# the casadata package (no download at run time).
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends wsclean aoflagger libgomp1 \
 && rm -rf /var/lib/apt/lists/*

ENV AIRFLOW_HOME=/opt/airflow \
    PYTHONPATH=/opt/contimg/include:/opt/contimg/plugins \
    CONTIMG_CASA_CONFIG_DIR=/opt/airflow/casa

WORKDIR /opt/contimg
COPY requirements.txt requirements.lock pyproject.toml ./
COPY include ./include
RUN pip install --no-cache-dir -r requirements.txt -c requirements.lock \
 && pip install --no-cache-dir --no-deps -e .
COPY dags ./dags
COPY plugins ./plugins

RUN useradd --uid 50000 --home-dir /opt/airflow --create-home airflow \
 && mkdir -p /data/incoming /data/staging /data/products \
 && chown -R airflow /opt/airflow /data
USER airflow
ENTRYPOINT ["airflow"]

# One image for every Python service of the pipeline; docker-compose.yml picks the command
# (`csp ingest`, `csp processor`, `csp query`, `csp simulator ...`, `csp topics create`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change,
# not on every source edit.
# The harness extra too (the lab package's dependencies), so that `csp experiment` and
# `csp report`, which cryptostream_lab adds to `csp`, run in the image.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['harness']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the sources, installed without touching the dependency layer.
COPY README.md ./
COPY platform ./platform
COPY simulator ./simulator
RUN pip install --no-deps . && rm -rf build

# Never run as root; the home folder is the working directory (CSP_RUN_DIR=.run lands there).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin csp
USER csp
WORKDIR /home/csp
# The experiment definitions, where `csp experiment` looks for them (relative to the cwd).
COPY --chown=csp benchmarks/experiments ./benchmarks/experiments

# Containers are reached from other containers: listen on every interface inside them.
ENV CSP_QUERY_HOST=0.0.0.0 \
    CSP_METRICS_HOST=0.0.0.0

EXPOSE 3000
ENTRYPOINT ["csp"]
CMD ["--help"]

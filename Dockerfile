# One image for the service and the workers. TORCH_INDEX picks torch's build:
#   CPU (default): https://download.pytorch.org/whl/cpu     GPU: https://pypi.org/simple (PyPI's Linux wheel of
#   2.13.0 is the CUDA 13.0 build), or a https://download.pytorch.org/whl/cuXXX index for an older driver
FROM node:20-slim AS assets
# The dashboard's chart library, from the npm registry (never copied into the repository).
WORKDIR /assets
COPY trainq/service/assets/package.json trainq/service/assets/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# "[gpu]" for the GPU image: NVML, for a job's GPU utilisation series
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TRAINQ_DATA_DIR=/data TRAINQ_HOST=0.0.0.0 \
    TRAINQ_EXAMPLES_DIR=/app/examples

WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
COPY pyproject.toml README.md ./
COPY trainq ./trainq
COPY --from=assets /assets/node_modules ./trainq/service/assets/node_modules
COPY examples ./examples
RUN pip install ".${EXTRAS}" && useradd --create-home trainq && mkdir -p /data && chown trainq /data
USER trainq
EXPOSE 8000
CMD ["trainq", "serve"]

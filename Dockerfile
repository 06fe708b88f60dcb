# wsdjax for Cloud TPU on GKE (launch/gke.py): this checkout, installed with its `tpu` extra
# (jax[tpu]: libtpu) and `gcs` extra (gs:// workdirs). Build from the repo root and push:
#   docker build -t us-docker.pkg.dev/PROJECT/REPO/wsdjax:latest .
#   docker push us-docker.pkg.dev/PROJECT/REPO/wsdjax:latest
# then: python launch/gke.py manifest --image us-docker.pkg.dev/PROJECT/REPO/wsdjax:latest ...
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY . .
RUN pip install --upgrade pip && pip install '.[tpu,gcs]'
# The JobSet gives the command (python -m wsdjax.train --config=configs/... --workdir=gs://...).
CMD ["python", "-m", "wsdjax.train", "--help"]

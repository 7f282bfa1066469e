# tfship's model server image: a drop-in for the official tensorflow/serving image, same contract.
#
#   docker build -f docker/model-server.Dockerfile -t tfship-model-server .
#   docker run -p 8500:8500 -p 8501:8501 -v "$PWD/models:/models:ro" -e MODEL_NAME=digits tfship-model-server
#   docker run ... tfship-model-server --model_config_file=/models/models.config   # extra flags pass through
#
# Ports 8500 (gRPC) and 8501 (REST); MODEL_BASE_PATH=/models and MODEL_NAME=model; the entry point runs
#   tfship-model-server --port=8500 --rest_api_port=8501 --model_name=${MODEL_NAME}
#                       --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"
# as tensorflow/serving runs tensorflow_model_server. Unlike TF Serving it verifies model signatures when
# given a public key: mount it and pass --tfship_public_key=/keys/signing_key.pub (or set TFSHIP_PUBLIC_KEY).
#
# Offline builds (docker/build-test-images.sh) put wheels of every dependency and of the build backend in
# docker/wheelhouse/ of the build context and pass --build-arg PIP_NO_INDEX=1; a build of a checkout
# finds no wheels there and installs from the package index.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS install
# pip reads these from the environment; build arguments are in the environment of RUN.
ARG PIP_NO_INDEX=0
ARG PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_NO_CACHE_DIR=1
COPY docker/wheelhouse/ /wheelhouse/
# Dependencies first, in layers of their own: a change to tfship's code reinstalls only tfship's wheel.
RUN python3 -m venv /opt/tfship \
 && if [ -f /wheelhouse/requirements.txt ]; then \
        /opt/tfship/bin/pip install --find-links /wheelhouse -r /wheelhouse/requirements.txt; \
    fi
COPY pyproject.toml README.md /src/
COPY tfship /src/tfship
COPY exporter /src/exporter
COPY serving /src/serving
COPY client /src/client
RUN /opt/tfship/bin/pip wheel --no-deps --find-links /wheelhouse --wheel-dir /dist /src

FROM ${BASE_IMAGE}
ARG PIP_NO_INDEX=0
# Everything that does not depend on tfship's code comes first, so that a change to the code rebuilds
# only the last steps (each step of the classic builder costs seconds on some storage drivers).
RUN useradd --create-home --uid 10001 --user-group tfship \
 && mkdir -p /models \
 && chown tfship:tfship /models
ENV PATH=/opt/tfship/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MODEL_BASE_PATH=/models \
    MODEL_NAME=model
EXPOSE 8500 8501
# Healthy once every configured model (MODEL_NAME's, or each one of --model_config_file) has an AVAILABLE
# version: tfship's server answers GET /v1/ready with 200 then, and with 503 and each model's reason
# otherwise (the reason lands in `docker inspect`'s health log). /v1/live is the liveness probe.
HEALTHCHECK --interval=5s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:8501/v1/ready', timeout=4)\nexcept OSError as exc:\n    sys.exit('not ready: ' + (exc.read(400).decode('utf-8', 'replace') if hasattr(exc, 'read') else str(exc)))"]
ENTRYPOINT ["/bin/sh", "-c", "exec tfship-model-server --port=8500 --rest_api_port=8501 --model_name=\"${MODEL_NAME}\" --model_base_path=\"${MODEL_BASE_PATH}/${MODEL_NAME}\" \"$@\"", "tfship-model-server"]
WORKDIR /home/tfship
COPY --from=install /opt/tfship /opt/tfship
COPY --from=install /dist /dist
# Offline the dependencies are all in /opt/tfship already; otherwise pip fetches them here.
RUN /opt/tfship/bin/pip install --quiet --no-cache-dir --disable-pip-version-check /dist/*.whl
USER 10001
# `tfship serve up --engine docker --image ...` reads it: this image's server takes flags older official
# images refuse as unknown (--enable_grpc_healthcheck_service, --max_num_load_retries).
LABEL org.tfship.model-server="tfship-model-server"

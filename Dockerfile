# The bot itself. It drives the host's Docker engine, so run it with the engine's socket mounted:
#   docker build -t agentbot . && docker run --env-file .env -v /var/run/docker.sock:/var/run/docker.sock \
#     -v agentbot-data:/data agentbot
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY agent_image ./agent_image
RUN pip install --no-cache-dir .
ENV AGENT_IMAGE_DIR=/app/agent_image DATA_DIR=/data PYTHONUNBUFFERED=1
VOLUME /data
CMD ["python", "-m", "bot", "run"]

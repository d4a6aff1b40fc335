# The Batchy service: gunicorn serving the Flask app, configured by BATCHY_* variables.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY batchy ./batchy
COPY waitsy ./waitsy
RUN pip install --no-cache-dir . && useradd --system --uid 10001 batchy
COPY cfg ./cfg
USER batchy
ENV BATCHY_CFG_DIR=/app/cfg
EXPOSE 5000
CMD ["batchy", "serve", "--host", "0.0.0.0", "--port", "5000"]

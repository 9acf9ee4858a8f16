"""edge-worker: run msgpack job requests from RabbitMQ on a local Modzy Edge inference server."""

__version__ = "0.1.0"

"""streamrank: real-time personalized re-ranking with LLM embeddings on Apache Flink."""

__version__ = "0.1.0"

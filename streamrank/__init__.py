"""streamrank: real-time personalized re-ranking with LLM embeddings on Apache Flink.

This package is the top layer: the command-line tools (cli, demo, bench, eval, chaos, watch,
cluster, local Kafka). Below it: ``jobs`` (the topology), ``operators`` and ``udfs`` (Flink
functions), ``recsys`` (the pure model), ``contracts`` (settings, messages).
"""

__version__ = "0.1.0"

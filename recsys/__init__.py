"""The recommender itself: pure Python/numpy over user state and the catalog, no Flink, no
Kafka. The job's operators and the offline tools (eval, bench, chaos) call the same code."""

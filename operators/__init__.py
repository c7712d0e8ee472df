"""Flink functions of the streamrank job, and the pure ranking math they call.

``ranking``, ``user_state`` and ``catalog`` are plain Python/numpy and know nothing of Flink;
``functions`` holds the Flink ``ProcessFunction`` classes that load state, call them, store
state and emit.
"""

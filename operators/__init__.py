"""The Flink functions of the streamrank job, one file per operator along the topology
(parse, user history, item branch, ranker), with what they share (Row types, broadcast-state
codecs, metrics). They load state, call :mod:`recsys`, store state and emit."""

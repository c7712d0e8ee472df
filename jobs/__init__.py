"""Flink topologies of streamrank and the entry points that build and run them."""

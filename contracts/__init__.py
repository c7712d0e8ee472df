"""The contracts every layer shares: settings (conf/streamrank.yaml), wire messages and Kafka
client options. Imports nothing of streamrank."""

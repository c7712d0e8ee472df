"""The embedding UDF (transformers + torch) and its persistent cache (rocksdict)."""

"""Real servers on loopback (S3, MLflow tracking) that the tests and the benchmarks both start: not product code."""

"""Where work runs: executors by name, the supervised process pool, Spark, and the
decoding pipeline that feeds a model."""

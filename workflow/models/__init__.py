"""Embedding models: the registry and conventions, Keras applications and user models,
TFLite files."""

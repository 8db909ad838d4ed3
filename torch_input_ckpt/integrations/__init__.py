"""Trainer integrations (Lightning, Hugging Face Trainer and Accelerate); public through ``lightning``/``hf``."""

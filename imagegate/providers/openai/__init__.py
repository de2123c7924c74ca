"""The OpenAI-compatible upstream provider (``type: openai``)."""

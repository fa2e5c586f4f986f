"""The routing layer: the guide's OpenAI-compatible API in front of the endpoints."""

"""The OpenAI-compatible HTTP door of the Dialogue API (`server.http_port`)."""

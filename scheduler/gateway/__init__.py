"""OpenAI-compatible gateway: auth, quotas, routing, retry, metering (see app.create_app)."""

"""Call types every layer shares: the request context, resolved target and answer (below pipeline, translate, logs)."""

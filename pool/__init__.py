"""Pool: the control plane (models, store, selector, scraping, checking, accounts, events)."""

"""Built-in source parsers: plaintext lists, HTML tables, JSON APIs."""

"""Built-in notifiers: ``smtp`` and ``webhook``; each stays off until its settings section exists."""

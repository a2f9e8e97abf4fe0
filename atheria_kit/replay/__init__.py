"""Multi-symbol historical replay: lock-step bar feed, paper account, resumable engine with KPIs and penalties."""

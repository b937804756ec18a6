"""Per-backend test harnesses: one store, our backend on it, pyworkflow-engine on it, raw inspection."""

"""The orchestrator: cross-channel fatigue decisions, follow-ups and campaign planning."""

"""Fatigue ledgers: one interface (`base.FatigueStore`), one module per backend."""

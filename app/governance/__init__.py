"""Governance (docs/governance.md): managed keys, per-key limits and budgets, on a state store shared by workers."""

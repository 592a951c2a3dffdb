"""Tenants: who owns what, who may see it, and qualified model names (`acme/churn`)."""

"""Tenants: their declared settings, who may see which, and qualified model names.

Pure (no registry, no I/O), at the bottom of the layering so every layer can use it; the
registry's view of tenants (declared plus API-created) is `modelworks.registry.tenants`.
"""

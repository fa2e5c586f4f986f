"""Configuration: the catalog, cluster profiles, router settings, the registry and naming."""

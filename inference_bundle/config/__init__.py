"""Configuration: catalog, frameworks, cluster profiles, router settings, registry, naming."""

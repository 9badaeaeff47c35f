"""Paper-specific data pipelines and profile registrations."""

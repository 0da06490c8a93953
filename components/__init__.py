"""One ``pulumi.ComponentResource`` per concern of the platform; see each module's docstring."""

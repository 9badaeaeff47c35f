"""The phantom page: how the NPC digital phantom is built, shown on its cases."""

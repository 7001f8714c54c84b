"""Sharing: grants through proxy nodes (KP-CPRE), on top of the contracts and the store."""

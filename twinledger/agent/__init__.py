"""The physical world: the plant simulator and the device agent."""

"""Digital twins: specifications (AutomationML) and the contracts built on them."""

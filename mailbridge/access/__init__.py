"""What a tenant may reach: API keys (who calls), egress (where we connect for a tenant), mailbox credentials."""

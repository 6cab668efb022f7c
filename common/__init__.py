"""What every mfetch role shares: content identity, errors, configuration, the gRPC API."""

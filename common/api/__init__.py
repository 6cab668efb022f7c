"""Generated gRPC stubs for proto/mfetch/v1 (do not edit; run scripts/genproto.py)."""
